"""The struct layouts in lamd.kernel.wire match what the C compiler makes of LAM's
headers (tests/c/kclient.c ``layout`` prints sizeof/offsetof).  No daemon."""

from __future__ import annotations

import subprocess

from lamd.kernel import constants, wire


def _layout(kclient):
    cp = subprocess.run([str(kclient), "layout"], capture_output=True, text=True,
                        timeout=30)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    sizes, offsets, consts = {}, {}, {}
    for line in cp.stdout.splitlines():
        f = line.split()
        if f[0] == "SIZE":
            sizes[f[1]] = int(f[2])
        elif f[0] == "OFFSET":
            offsets.setdefault(f[1], {})[f[2]] = int(f[3])
        elif f[0] == "CONST":
            consts[f[1]] = int(f[2])
    return sizes, offsets, consts


def test_sizes(kclient):
    sizes, _, _ = _layout(kclient)
    assert sizes == wire.SIZES


def test_offsets(kclient):
    _, offsets, _ = _layout(kclient)
    assert offsets == wire.OFFSETS


def test_struct_codecs_agree_with_sizes(kclient):
    sizes, _, _ = _layout(kclient)
    assert wire.KREQ_STRUCT.size == sizes["kreq"]
    assert wire.KREPLY_STRUCT.size == sizes["kreply"]
    assert wire.NMSG_STRUCT.size == sizes["nmsg"]
    assert wire.KMSG_STRUCT.size == sizes["kmsg"]


def test_constants(kclient):
    _, _, c = _layout(kclient)
    assert c["KPMAX"] == constants.KPMAX
    assert c["KNFYI"] == constants.KNFYI
    assert c["NHDSIZE"] == constants.NHDSIZE
    assert c["PRCMD"] == constants.PRCMD
    assert c["LAM_SIGUSR"] == int(constants.LAM_SIGUSR)
    assert c["ENOTPROCESS"] == int(constants.ENOTPROCESS)


def test_codecs_byte_for_byte(kclient):
    """C fills kreq/kreply/nmsg with distinct values; lamd.kernel.wire decodes them
    to the same values and re-encodes the identical bytes."""
    cp = subprocess.run([str(kclient), "dump"], capture_output=True, text=True,
                        timeout=30)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    raw = {f[1]: bytes.fromhex(f[2]) for f in
           (line.split() for line in cp.stdout.splitlines()) if f[0] == "HEX"}

    q = wire.KReq.unpack(raw["kreq"])
    assert (q.req, q.index, q.pid, q.priority, q.signal) == (1, 2, 3, 4, 5)
    assert tuple(q.fyi) == tuple(range(10, 19))
    assert (q.msg.event, q.msg.type, q.msg.length, q.msg.flags, q.msg.msg) == \
        (20, 21, 22, 23, 0x1122334455667788)
    assert (q.msg2.event, q.msg2.type, q.msg2.length, q.msg2.flags, q.msg2.msg) == \
        (-30, 31, 32, 33, 0x99AABBCCDDEEFF00)
    assert q.pack() == raw["kreq"]

    r = wire.KReply.unpack(raw["kreply"])
    assert (r.reply, r.signal, r.length, r.event, r.type, r.state, r.priority,
            r.index, r.sigs) == (1, 2, 3, -4, 5, 6, 7, 8, 9)
    assert tuple(r.fyi) == tuple(range(10, 19))
    assert r.blktime == 1.5
    assert r.pack() == raw["kreply"]

    n = wire.NMsg.unpack(raw["nmsg"])
    assert (n.dl_event, n.dl_link, n.node, n.event, n.type, n.length, n.flags) == \
        (1, 2, -3, 4, 5, 6, 7)
    assert tuple(n.data) == tuple(range(10, 18))
    assert n.msg == 0x0102030405060708
    assert n.pack() == raw["nmsg"]
