"""Booting a lamd into a universe (LAM's ``tools/lamboot``, ``tools/hboot``,
``share/ssi/boot/base``, ``share/etc/bootsockio.c``).

``callback``: the TCP messages between lamboot and each new lamd, sans-IO.
"""
