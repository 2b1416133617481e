"""The supervisor's reading of a device's log: a server whose serving loop ended (a session's
child died of a signal; the process lives on, serving nothing) is seen at once, from what
its log gained since that server started, and never from an earlier server's lines."""

import argparse

from dgms_tvm.device.supervisor import LOOP_ENDED, Device

ENDED = (b"RuntimeError: Child process 15921 " + LOOP_ENDED + b" -4\n")


def _device(tmp_path, old: bytes = b"") -> Device:
    args = argparse.Namespace(port_base=9090, key="cortex-a72", log=str(tmp_path / "events.log"))
    d = Device(args, 0)
    d.log.write_bytes(old)
    with open(d.log, "a") as f:  # as start() opens it for the new server
        d.log_seen, d.log_tail = f.tell(), b""
    return d


def test_an_ended_serving_loop_is_seen_once_it_is_logged(tmp_path):
    d = _device(tmp_path)
    with open(d.log, "ab") as f:
        f.write(b"INFO bind to 127.0.0.1:9090\nINFO load_module /tmp/x/k.so\n")
    assert not d.loop_ended()
    with open(d.log, "ab") as f:
        f.write(b"qemu: uncaught target signal 4 (Illegal instruction)\n" + ENDED)
    assert d.loop_ended()


def test_a_message_split_between_two_reads_is_seen(tmp_path):
    d = _device(tmp_path)
    half = len(ENDED) // 2
    with open(d.log, "ab") as f:
        f.write(ENDED[:half])
    assert not d.loop_ended()
    with open(d.log, "ab") as f:
        f.write(ENDED[half:])
    assert d.loop_ended()


def test_an_earlier_servers_lines_are_not_read(tmp_path):
    d = _device(tmp_path, old=b"INFO bind\n" + ENDED + b"INFO bind to 127.0.0.1:9090\n")
    assert not d.loop_ended()
    with open(d.log, "ab") as f:
        f.write(b"INFO connected from ('127.0.0.1', 44052)\n")
    assert not d.loop_ended()
