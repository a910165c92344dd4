"""The kernel's I/O: LAM's ``otb/sys/kernel/kernelio.c`` on an epoll loop."""

from .kernelio import IOLimits, KernelIO

__all__ = ["IOLimits", "KernelIO"]
