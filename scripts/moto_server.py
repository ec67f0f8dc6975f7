"""Serve moto 5.2.5 (SQS + KMS) on one port, with two upstream problems patched.

Used by scripts/stack.sh for tests and the demo; never for production. One process holds all
state in memory, so exactly one must serve the port.

Patches (why and how: docs/ARCHITECTURE.md, section "The SQS/KMS emulator"):
1. Speed: moto.sqs.models calls a datetime-based clock (~20 us) for every message on every scan,
   and every SendMessage recomputes all queue attributes (three scans over the queue) only to read
   ContentBasedDeduplication. We swap in time.time()-based clocks and, inside the send path,
   answer that single attribute without the scans.
2. Race: Queue.delete_message rebuilds the message list without a lock, so concurrent deletes can
   resurrect deleted messages. Receive, delete and change-visibility are serialised on the
   queue's own _messages_lock (a reentrant Condition; long-poll waits release it).
"""

import argparse
import functools
import threading
import time

import moto.sqs.models as sqs_models
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

_orig_unix_time = sqs_models.unix_time
_orig_unix_time_millis = sqs_models.unix_time_millis


def _fast_unix_time(dt=None):
    return time.time() if dt is None else _orig_unix_time(dt)


def _fast_unix_time_millis(dt=None):
    return time.time() * 1000.0 if dt is None else _orig_unix_time_millis(dt)


sqs_models.unix_time = _fast_unix_time
sqs_models.unix_time_millis = _fast_unix_time_millis

_send_path = threading.local()
_full_attributes = sqs_models.Queue.attributes.fget


def _attributes(queue):
    # In the send path only ContentBasedDeduplication is read; skip the three queue scans.
    if getattr(_send_path, "active", False):
        if not queue.fifo_queue:
            return {}
        value = getattr(queue, "content_based_deduplication", False)
        return {"ContentBasedDeduplication": str(value).lower()}
    return _full_attributes(queue)


sqs_models.Queue.attributes = property(_attributes)


def _in_send_path(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        outer = getattr(_send_path, "active", False)
        _send_path.active = True
        try:
            return fn(*args, **kwargs)
        finally:
            _send_path.active = outer

    return wrapper


sqs_models.SQSBackend.send_message = _in_send_path(sqs_models.SQSBackend.send_message)


def _under_queue_lock(fn):
    @functools.wraps(fn)
    def wrapper(self, queue_name, *args, **kwargs):
        queue = self.get_queue(queue_name)
        with queue._messages_lock:
            return fn(self, queue_name, *args, **kwargs)

    return wrapper


for _name in ("receive_message", "delete_message", "change_message_visibility"):
    setattr(sqs_models.SQSBackend, _name, _under_queue_lock(getattr(sqs_models.SQSBackend, _name)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--threads", type=int, default=96, help="above the long polls open at once")
    args = parser.parse_args()
    import waitress

    app = DomainDispatcherApplication(create_backend_app)
    waitress.serve(app, host=args.host, port=args.port, threads=args.threads, ident="moto")


if __name__ == "__main__":
    main()
