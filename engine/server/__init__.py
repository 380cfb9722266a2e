"""The engine as an HTTP service (API v1): a job queue in front of the tasks in `engine.tasks`.

- `schemas`: the wire contract (pydantic request/response models, the job params union);
- `jobs`: job records on disk, the queue and the worker thread;
- `uploads`: multipart uploads streamed to disk under a size limit;
- `security`: bind-address rule, bearer token, allow-list of server-side folders;
- `app`: the FastAPI application; `main.serve` runs it with uvicorn;
- `launcher`: start an engine process on a free loopback port (tests, benchmarks, plugins);
- `cli_support`: what `gfm4d serve` and `gfm4d ... --engine URL` call.
"""


def serve(*args, **kwargs):
    """Run the engine's HTTP API until interrupted (see `engine.server.main.serve`)."""
    from .main import serve as _serve

    return _serve(*args, **kwargs)
