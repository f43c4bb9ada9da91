"""Every default and tuning constant of batchctl, each with what it means, in one place.

Nothing here imports anything: any module may read it, `batchctl --help` included.
"""

from __future__ import annotations

# -- exit codes of the command line (DESIGN.md "Command-line contract") ----------------------------

EXIT_COMPLETED = 0  # the job completed, or the command succeeded
EXIT_FAILED = 1  # the job failed
EXIT_USAGE = 2  # bad usage or input: invalid JSON, an unknown job or id, a bad param
EXIT_STOPPED = 3  # the job stopped
EXIT_REFUSED = 4  # refused by state: already running, already complete, not restartable, not live
EXIT_ENVIRONMENT = 5  # the environment: database unreachable, invalid configuration

# -- configuration ------------------------------------------------------------------------------------

CONFIG_FILE_NAME = "config.toml"
DEFAULT_DATABASE_FILE = "batchctl.db"  # a SQLite file beside the config file (or in the cwd)
DEFAULT_JOBS_DIR = "jobs"
DEFAULT_LOG_DIR = "logs"
DEFAULT_HEARTBEAT_INTERVAL = 5.0  # seconds between two heartbeats of a running execution
DEFAULT_HEARTBEAT_TIMEOUT = 60.0  # a live execution silent this long is taken as lost
DEFAULT_DB_OUTAGE_TIMEOUT = 60.0  # seconds a run (or a service) rides out an unreachable repository
MAX_SECONDS = 365 * 86_400.0  # the most seconds a setting takes (a year): more overflows sleeps

ENV_CONFIG = "BATCHCTL_CONFIG"  # the configuration file
ENV_DEBUG = "BATCHCTL_DEBUG"  # 1: tracebacks with errors
ENV_DATABASE_URL = "BATCHCTL_DATABASE_URL"
ENV_JOBS_DIR = "BATCHCTL_JOBS_DIR"
ENV_LOG_DIR = "BATCHCTL_LOG_DIR"
ENV_HEARTBEAT_INTERVAL = "BATCHCTL_HEARTBEAT_INTERVAL"
ENV_HEARTBEAT_TIMEOUT = "BATCHCTL_HEARTBEAT_TIMEOUT"
ENV_DB_OUTAGE_TIMEOUT = "BATCHCTL_DB_OUTAGE_TIMEOUT"
ENV_PROJECT_DIR = "BATCHCTL_PROJECT_DIR"  # what relative paths in items are relative to
ENV_DASK_SCHEDULER = "BATCHCTL_DASK_SCHEDULER"  # the Dask scheduler of mode="dask" partitions

# -- processes batchctl starts --------------------------------------------------------------------------

HIDDEN_COMMAND = "run-execution"  # `python -m batchctl run-execution ID`: a detached execution's process
LOG_FILE_MODE = 0o600  # a detached execution's log: readable by its owner only (params, data)
# Environment variables a launched job never inherits: the services' own secrets
# (BATCHCTL_API_TOKEN and any BATCHCTL_* token, secret, password or key, and the listener's broker
# URL, which holds its password); see launcher.child_env.
SERVICE_SECRET_ENV = r"(?i)^BATCHCTL_(\w*(TOKEN|SECRET|PASSWORD|PASSWD|KEY)\w*|LISTEN_URL)$"  # a regex

# -- the HTTP API and dashboard (`batchctl serve`) ------------------------------------------------------

SERVE_HOST = "127.0.0.1"  # serve binds the loopback interface unless told otherwise
SERVE_PORT = 8080
ENV_API_TOKEN = "BATCHCTL_API_TOKEN"  # a token with the operate role
RECOVER_INTERVAL = 5.0  # seconds between two lost-process checks of serve (never per request)
EVENT_POLL_INTERVAL = 0.25  # seconds between two reads of the event outbox by an event stream
LISTING_TTL = 1.0  # seconds an /api/executions answer is reused at most (see web/listings.py)
LISTING_CACHE_SIZE = 64  # /api/executions answers kept (pages, filters)
EVENT_SETTLE = 2.0  # seconds an event stream keeps looking below its newest id for late commits
LOG_TAIL_BYTES = 64 * 1024  # the end of a log that /api/executions/{id}/log returns
SHUTDOWN_GRACE = 5.0  # seconds serve gives open requests once told to stop (then cancels them)

# -- the engine -----------------------------------------------------------------------------------------

STOP_POLL_INTERVAL = 0.5  # seconds between two reads of whether a stop was requested (engine, workers)
EXIT_MESSAGE_LIMIT = 20_000  # characters of a traceback kept in an exit message
STOP_WAIT_POLL = 0.1  # seconds between two looks at an execution `stop --wait` waits for
LOG_FOLLOW_POLL = 0.2  # seconds between two looks at a followed log
LOG_FINAL_WAIT = 2.0  # seconds `logs --follow` waits for an ended execution's process to exit

# -- repository outages (a Postgres restart or fail-over; see repository/connect.py) ---------------------

OUTAGE_BACKOFF = 0.1  # seconds before the first new attempt on an unreachable repository
OUTAGE_BACKOFF_MAX = 2.0  # doubled per attempt up to this: a run goes on <= 2 s after the database returns
OUTAGE_SLICE = 0.1  # seconds: how soon a stopping service or worker stops waiting for the repository

# -- chunk steps ----------------------------------------------------------------------------------------

DEFAULT_CHUNK_SIZE = 100  # items per chunk when a chunk step does not say
DEFAULT_SKIP_LIMIT = 10  # skips a chunk step tolerates when `skip` is given (Spring Batch's default)
DEFAULT_RETRY_LIMIT = 3  # retries of a failing item or chunk write when `retry` is given
BACKOFF_MAX = 60.0  # seconds: the longest wait between two attempts, however many retries

# -- partitioned steps and workers --------------------------------------------------------------------

DEFAULT_PARTITION_WORKERS = 2  # workers of a partitioned step when it does not say
PARTITION_POLL_INTERVAL = 0.2  # seconds between two looks at the partitions' statuses
LOCAL_WORKER_RESPAWNS = 2  # extra local worker processes started, per worker, after crashes
REMOTE_WAIT_LOG_INTERVAL = 30.0  # seconds between two "waiting for workers" log lines
THREAD_CONNECTIONS = 3  # connections a worker thread may use at once: its chunk's, a read, a heartbeat
DASK_CONNECT_TIMEOUT = 10.0  # seconds to reach a configured Dask scheduler before the step fails
DASK_RESUBMITS = 3  # new Dask tasks per partition after its worker died, before it is failed
DASK_LIVENESS_INTERVAL = 1.0  # seconds between two looks at which Dask workers are still there
DASK_CLAIM_POLL = 0.5  # seconds a Dask task waits between two looks at a partition held by another
WORKER_POLL_INTERVAL = 2.0  # seconds an idle worker waits for new partitions (LISTEN wakes it sooner)
IDLE_SLICE = 0.25  # seconds an idle worker waits at a time, so that it sees a shutdown request

# -- the scheduler ------------------------------------------------------------------------------------

SCHEDULER_POLL = 5.0  # seconds between two looks at pauses and unlaunched fires when no fire is due sooner
PENDING_FIRE_AGE = 3.0  # seconds a fire's execution may wait for its scheduler to launch it before another does
SCHEDULER_KIND = "scheduler"  # the kind a scheduler registers as in the worker table (`batchctl workers`)
