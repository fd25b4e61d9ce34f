#!/usr/bin/python3
"""A WatchStats subscriber for tests/resources.rs, run inside the test host (python3-dbus,
GLib main loop). Subscribes with INTERVAL_MS, collects Stats signals for SECONDS, calls
UnwatchStats, listens for one more second, and prints one JSON object:

  {"refused": error name for an interval of 1 ms, "unique": our bus name,
   "during": [[received_at, sample timestamp_usec, destination, [container names]]...],
   "unwatched_at": time UnwatchStats returned (µs since the epoch),
   "after": [...same, signals received after that]}

usage: watch-stats.py INTERVAL_MS SECONDS
"""
import json
import sys
import time

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

interval_ms, seconds = int(sys.argv[1]), float(sys.argv[2])
dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.SystemBus()
mgr = dbus.Interface(
    bus.get_object("org.berth.berth1", "/org/berth/berth1"), "org.berth.berth1.Manager"
)
out = {"unique": bus.get_unique_name(), "during": [], "after": []}
phase = "during"


def on_stats(stats, message=None):
    now = int(time.time() * 1e6)
    ts = max((int(s[2]) for s in stats), default=0)
    out[phase].append([now, ts, message.get_destination(), [str(s[0]) for s in stats]])


bus.add_signal_receiver(
    on_stats,
    signal_name="Stats",
    dbus_interface="org.berth.berth1.Manager",
    path="/org/berth/berth1",
    message_keyword="message",
)
try:
    mgr.WatchStats(dbus.UInt64(1000))
    out["refused"] = None
except dbus.DBusException as e:
    out["refused"] = e.get_dbus_name()
mgr.WatchStats(dbus.UInt64(interval_ms * 1000))
loop = GLib.MainLoop()


def unwatch():
    global phase
    mgr.UnwatchStats()
    out["unwatched_at"] = int(time.time() * 1e6)
    # Signals sent before the reply are already queued; they are dispatched now, still as
    # "during" if their sample predates the reply (checked by the test on timestamps).
    phase = "after"
    GLib.timeout_add(1000, loop.quit)
    return False


GLib.timeout_add(int(seconds * 1000), unwatch)
loop.run()
print(json.dumps(out))
