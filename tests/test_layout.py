"""The struct layouts in lamd.wire match what the C compiler makes of LAM's
headers (tests/c/kclient.c ``layout`` prints sizeof/offsetof).  No daemon."""

from __future__ import annotations

import subprocess

from lamd import constants, wire


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
