"""`batchctl serve`: the RPC trigger. An HTTP API and a dashboard over `Batch`, in one process.

Imported only by the `serve` command (FastAPI and uvicorn come with the `batchctl[web]` extra):

- `auth`: API tokens with a role (read, operate), dashboard sessions, the cross-site check;
- `api`: the JSON routes under /api, thin over `Batch`, answering what `--json` prints;
- `events`: server-sent event streams of the outbox and of a log;
- `metrics`: the Prometheus text of /metrics;
- `pages`: the dashboard's HTML (templates/ and static/ ship in the package);
- `app`: the FastAPI application: its routes, the one error handler, the background recovery;
- `server`: the service: binding, sign-in URL, worker registration, graceful SIGTERM.
"""
