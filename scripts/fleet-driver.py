#!/usr/bin/env python3
"""Test users for `scripts/run.sh`: starts and stops their servers on a schedule.

Drives a real JupyterHub through its REST API with an admin service token, so
the agent watching the hub sees servers start and stop and activity arrive,
and usage and SLO data accumulate in the collector while `run.sh` runs.

    fleet-driver.py --hub URL --token-file FILE alice:120:300 bob:240:360

`NAME:RUN:EVERY` (seconds): NAME's server runs for the first RUN seconds of
every EVERY seconds, counted from the driver's start. While a server runs the
driver reports activity for it every --activity seconds. Standard library
only (it runs with the hub's venv Python). SIGTERM or SIGINT ends it: it
stops its users' servers first and waits until the hub lists none.
"""

import argparse
import datetime
import json
import signal
import sys
import time
import urllib.error
import urllib.request


class Hub:
    """The hub's REST API with one token."""

    def __init__(self, url, token):
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method, path, body=None):
        """(status, parsed JSON or None); network errors raise OSError."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": "token " + self.token,
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            text = e.read()
            status = e.code
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, None


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def log(message):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
    print(f"{stamp} {message}", flush=True)


def parse_schedule(text):
    try:
        name, run, every = text.split(":")
        run, every = int(run), int(every)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want NAME:RUN:EVERY (seconds)")
    if not name or run <= 0 or every < run:
        raise argparse.ArgumentTypeError(f"{text!r}: want 0 < RUN <= EVERY")
    return name, run, every


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", required=True, help="the hub's public URL")
    parser.add_argument("--token-file", required=True, help="an admin service token")
    parser.add_argument("--tick", type=float, default=5.0, help="seconds between checks")
    parser.add_argument("--activity", type=float, default=30.0, help="seconds between activity reports")
    parser.add_argument("schedule", nargs="+", type=parse_schedule, help="NAME:RUN:EVERY")
    args = parser.parse_args()

    with open(args.token_file) as f:
        hub = Hub(args.hub, f.read().strip())

    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))

    t0 = time.monotonic()
    created = set()
    last_activity = {}
    while not stopping:
        elapsed = time.monotonic() - t0
        for name, run, every in args.schedule:
            want = (elapsed % every) < run
            try:
                if name not in created:
                    status, _ = hub.call("POST", f"/hub/api/users/{name}")
                    if status not in (201, 409):
                        log(f"create {name}: HTTP {status}")
                        continue
                    created.add(name)
                status, user = hub.call("GET", f"/hub/api/users/{name}")
                if status != 200 or not isinstance(user, dict):
                    log(f"read {name}: HTTP {status}")
                    continue
                server = (user.get("servers") or {}).get("")
                pending = user.get("pending") or (server or {}).get("pending")
                if pending:
                    continue  # a start or stop in progress: wait for it
                if want and server is None:
                    status, _ = hub.call("POST", f"/hub/api/users/{name}/server", {})
                    log(f"start {name}'s server: HTTP {status}")
                    last_activity[name] = 0.0
                elif not want and server is not None:
                    status, _ = hub.call("DELETE", f"/hub/api/users/{name}/server")
                    log(f"stop {name}'s server: HTTP {status}")
                elif want and server is not None and server.get("ready"):
                    if time.monotonic() - last_activity.get(name, 0.0) >= args.activity:
                        stamp = now_iso()
                        status, _ = hub.call(
                            "POST",
                            f"/hub/api/users/{name}/activity",
                            {"last_activity": stamp, "servers": {"": {"last_activity": stamp}}},
                        )
                        if status == 200:
                            last_activity[name] = time.monotonic()
                        else:
                            log(f"activity for {name}: HTTP {status}")
            except OSError as e:
                # The hub restarting or busy: try again next tick.
                log(f"{name}: {e}")
        deadline = time.monotonic() + args.tick
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)
    stop_servers(hub, [name for name, _, _ in args.schedule])
    log("driver stopped")
    return 0


def stop_servers(hub, names, timeout=30.0):
    """Stops the users' servers and waits until the hub lists none of them.

    So the agent, still running, sees each stop: otherwise a server running
    when everything stops would only be seen gone at the next run's first
    observation, and its time would run on through the downtime.
    """
    deadline = time.monotonic() + timeout
    waiting = list(names)
    while waiting and time.monotonic() < deadline:
        still = []
        for name in waiting:
            try:
                status, user = hub.call("GET", f"/hub/api/users/{name}")
                if status != 200 or not isinstance(user, dict):
                    continue  # no such user (never created): nothing to stop
                if (user.get("servers") or {}).get("") is None:
                    continue
                if not user.get("pending"):
                    status, _ = hub.call("DELETE", f"/hub/api/users/{name}/server")
                    log(f"stop {name}'s server (driver stopping): HTTP {status}")
                still.append(name)
            except OSError as e:
                log(f"{name}: {e}")
        waiting = still
        if waiting:
            time.sleep(0.5)
    if waiting:
        log(f"servers still running after {timeout:.0f} s: {', '.join(waiting)}")


if __name__ == "__main__":
    sys.exit(main())
