"""An application under the test's control, run as a separate process by tests/test_operator.py.

It calls ``otel_audit.configure()`` the way a new user would (no logging handler of its
own unless ``--basic-config``), then obeys one command per line on stdin and answers
one line on stdout:

* ``log N``: log N audit records; ``flush T``: flush with timeout T, answers the result;
* ``wait-down``: wait until the sink has failed to write (the database is unreachable);
* ``wait-misconfigured``: wait until the sink reports a configuration error (and its status file says so);
* ``shutdown T``: ``handle.shutdown(timeout=T)``, answers ``<result> <seconds>``;
* ``stats``: the pipeline's counters as JSON;
* ``kill``: SIGKILL itself; ``exit``: return from the script (``atexit`` shuts down).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

import otel_audit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("spool")
    parser.add_argument("--basic-config", action="store_true", help="the application logs to stderr itself")
    args = parser.parse_args()
    if args.basic_config:
        logging.basicConfig(level=logging.WARNING, format="APP-HANDLER %(levelname)s %(name)s: %(message)s")
    handle = otel_audit.configure(dsn=args.dsn, spool_dir=args.spool, metrics=False, service_name="operator-app")
    log = logging.getLogger("app")
    logged = 0
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "log":
            for _ in range(int(arg)):
                log.info(
                    "record viewed",
                    extra={
                        "audit.action": "read",
                        "audit.actor.id": "u",
                        "audit.resource.type": "t",
                        "audit.resource.id": str(logged),
                        "audit.result": "success",
                    },
                )
                logged += 1
            print(logged, flush=True)
        elif command == "flush":
            print(handle.flush(float(arg)), flush=True)
        elif command == "wait-down":
            while handle.pipeline.stats.database_up is not False:
                time.sleep(0.02)
            print("down", flush=True)
        elif command == "wait-misconfigured":
            while handle.pipeline.stats.configuration_error is None:
                time.sleep(0.02)
            time.sleep(1.1)  # the sink writes its status file every second
            print("misconfigured", flush=True)
        elif command == "shutdown":
            started = time.monotonic()
            result = handle.shutdown(timeout=float(arg))
            print(result, round(time.monotonic() - started, 3), flush=True)
        elif command == "stats":
            print(json.dumps(handle.stats(), default=str), flush=True)
        elif command == "kill":
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        elif command == "exit":
            print("exiting", flush=True)
            return


if __name__ == "__main__":
    main()
