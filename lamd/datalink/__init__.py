"""LAM's UDP datalink between the lamds of a universe (``otb/sys/dli_inet``,
``otb/sys/dlo_inet``, ``share/include/dl_inet.h``).

``frame``: the bytes on the wire (datalink frames and acks), sans-IO.
"""
