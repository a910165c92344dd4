"""``typing.cast``, ``mypy_extensions.trait`` and ``mypyc_attr`` without importing ``typing``.

``typing`` costs about 5 ms of a start (issue 13: the first client of a
socket activation waits for all of it), and both names do nothing at run
time. mypy (and so mypyc, which compiles a ``cast`` to nothing and a
``trait`` class natively) sees the real ones through the ``TYPE_CHECKING``
import; Python, compiled or not, imports the do-nothing ones below. This
module is never compiled: mypyc would compile the ``else`` branch as
unreachable.
"""

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import cast

    from mypy_extensions import mypyc_attr, trait
else:
    def cast(_type, value):
        return value

    def trait(cls):
        return cls

    def mypyc_attr(*_args, **_kwargs):
        return trait

__all__ = ["cast", "mypyc_attr", "trait"]
