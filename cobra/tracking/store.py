"""Where the tracking store is and whether it can be used: the URI, its password kept out of
every message, and the checks that fail a command before Ray starts rather than mid-sweep."""

import base64
import functools
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cobra.errors import TrackingError
from cobra.tracking.mlflow_api import MlflowClient
from cobra.uris import redact, split_userinfo

# Bounds applied to mlflow's HTTP client in processes that log to a server: its defaults retry a
# dead server for minutes, which would hang a trial instead of failing it.
HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def resolve_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else an absolute sqlite store `./mlflow.db`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for in-memory stores or other schemes)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


class Store:
    """One tracking store: its URI and one client of it, made on first use (a client opens the
    store: a sqlite file would be created) and shared by every call given this Store. It
    pickles as its URI, so a Ray worker handed one connects on its own."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @functools.cached_property
    def client(self) -> MlflowClient:
        if is_http(self.uri):  # against a server, bounded retries and timeouts
            for key, value in HTTP_ENV_DEFAULTS.items():
                os.environ.setdefault(key, value)  # the user's own setting wins
        return MlflowClient(self.uri)

    @property
    def redacted(self) -> str:
        """The URI with its password masked: what messages show."""
        return redact(self.uri, self.uri)

    def __reduce__(self):
        return Store, (self.uri,)


def open_store() -> Store:
    """The store `resolve_tracking_uri` names, checked usable (`check_reachable`)."""
    uri = resolve_tracking_uri()
    check_reachable(uri)
    return Store(uri)


def _login(uri: str) -> tuple[str, str] | None:
    """The login MLflow's client would send: MLFLOW_TRACKING_USERNAME/PASSWORD, else the user
    and password written in the URI."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return user, password
    login = split_userinfo(uri)[1]
    return login if login is not None and all(login) else None


def _request(uri: str, path: str) -> urllib.request.Request:
    """A request for `path` on the server of `uri`, with its login (see `_login`)."""
    request = urllib.request.Request(f"{split_userinfo(uri)[0].rstrip('/')}/{path}")
    login = _login(uri)
    if login is not None:
        token = base64.b64encode(":".join(login).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def _http_health(uri: str, timeout_s: float) -> str | None:
    """None when `{uri}/health` answers 200, else the reason it did not."""
    try:
        with urllib.request.urlopen(_request(uri, "health"), timeout=timeout_s) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return str(exc.reason)
    except Exception as exc:  # timeouts, resets, bad URLs: all mean "not usable"
        return f"{type(exc).__name__}: {exc}"


def _not_mlflow(uri: str, what: str) -> str:
    return (f"{uri} answers HTTP but is not an MLflow tracking server ({what}); point "
            f"MLFLOW_TRACKING_URI at `mlflow server`, or unset it to use the local store")


def _http_login(uri: str, timeout_s: float) -> str | None:
    """None when the server takes this process's credentials (or needs none) and speaks
    MLflow's REST API, else what is wrong.

    /health answers without a login on a basic-auth server, so a wrong or missing
    MLFLOW_TRACKING_USERNAME/PASSWORD would otherwise surface only after Ray started; and any web
    server answers /health, so the API's answer must be MLflow's JSON. The password itself is
    never part of the answer."""
    request = _request(uri, "api/2.0/mlflow/experiments/search?max_results=1")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            body = resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            login = _login(uri)
            who = f"user {login[0]!r}" if login else "no login"
            return (f"MLflow server {uri} refused {who} (HTTP {exc.code}); set "
                    f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account it knows")
        if exc.code in (404, 405):
            return _not_mlflow(uri, f"its MLflow API answers HTTP {exc.code}")
        return None  # other answers are the tracking calls' business, not a login problem
    except Exception:  # the server went away since /health: reported by the tracking calls
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return _not_mlflow(uri, "its MLflow API does not answer JSON")
    return None


def _bounded(call, timeout_s: float, late: str | None) -> str | None:
    """call() in a thread, given timeout_s + 1 s: urllib's socket timeout does not bound a slow
    DNS lookup."""
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(timeout_s + 1.0)
    return result[0] if result else late


def _check_server(uri: str, timeout_s: float) -> None:
    # Not the mlflow client: it retries an unreachable server for minutes.
    reason = _bounded(lambda: _http_health(uri, timeout_s), timeout_s,
                      f"no answer within {timeout_s:g}s")
    if reason is not None:
        raise TrackingError(redact(
            f"MLflow server {uri} is unreachable ({reason}); start it (mlflow server ...) "
            f"or unset MLFLOW_TRACKING_URI to use the local store", uri))
    refused = _bounded(lambda: _http_login(uri, timeout_s), timeout_s, None)
    if refused is not None:
        raise TrackingError(redact(refused, uri))


def _check_sqlite_directory(uri: str, db: Path) -> None:
    parent = db.expanduser().resolve().parent
    if not parent.is_dir():
        raise TrackingError(redact(f"MLflow store {uri}: directory {parent} does not exist; "
                                   f"create it or point MLFLOW_TRACKING_URI elsewhere", uri))
    if not os.access(parent, os.W_OK):
        raise TrackingError(redact(f"MLflow store {uri}: directory {parent} is not writable; "
                                   f"fix its permissions or point MLFLOW_TRACKING_URI elsewhere",
                                   uri))


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (TrackingError) before any trial starts when the tracking store is unusable."""
    if is_http(uri):
        _check_server(uri, timeout_s)
        return
    db = sqlite_path(uri)
    if db is not None:
        _check_sqlite_directory(uri, db)
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(redact(f"MLflow store {uri} cannot be opened ({first}); fix "
                                   f"MLFLOW_TRACKING_URI or unset it to use ./mlflow.db", uri)
                            ) from None
