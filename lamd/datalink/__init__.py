"""LAM's UDP datalink between the lamds of a universe (``otb/sys/dli_inet``,
``otb/sys/dlo_inet``, ``share/include/dl_inet.h``).

``frame``: the bytes on the wire (datalink frames and acks), sans-IO.
``process``: ``python3 -m lamd.datalink``, the datalink and the boot
callback in a process of their own beside a sandboxed kernel;
``handoff``: the prefix tree's client of its systemd socket.
"""
