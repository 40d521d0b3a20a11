"""URIs as they may be shown: one redactor that knows every place a secret can sit in one
(the userinfo's password, query parameters such as `?password=` or `?token=`), used wherever a
URI or an error that may quote one is printed, logged or returned. No heavy imports: the error
path of every command uses it."""

import os
import re
import urllib.parse

# A query parameter whose name says it holds a secret (`?password=`, `?token=`, `?api_key=`,
# `?sslpassword=`, `?X-Amz-Signature=`): its value is hidden wherever the URI is shown.
SECRET_PARAM = re.compile(r"pass|pwd|token|secret|key|auth|credential|signature|sig$", re.I)
# Anything that looks like a URI in free text (an error message from a library, say).
URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def uri_secrets(uri: str) -> list[str]:
    """Every secret written into `uri`: the userinfo's password and the values of query
    parameters named like secrets, both as written and percent-decoded (longest first)."""
    try:
        parts = urllib.parse.urlsplit(uri)
        password = parts.password
    except ValueError:  # not a URL at all: nothing to find
        return []
    found = [password] if password else []
    for pair in parts.query.split("&"):
        name, sep, value = pair.partition("=")
        if sep and value and SECRET_PARAM.search(urllib.parse.unquote(name)):
            found.append(value)
    found += [urllib.parse.unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def redact(text: str, uri: str | None = None) -> str:
    """`text` with every secret hidden as ***: those of `uri` (and of MLFLOW_TRACKING_URI),
    and those of any URI written in `text` itself. Secrets in a tracking URI never reach a
    terminal, a log or a JSON line."""
    uris = [u for u in (uri, os.environ.get("MLFLOW_TRACKING_URI")) if u]
    uris += [found.rstrip(").,;:]") for found in URI_IN_TEXT.findall(text)]
    for secret in sorted({s for u in uris for s in uri_secrets(u)}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def split_userinfo(uri: str) -> tuple[str, tuple[str, str] | None]:
    """`http://user:pw@host:5000/x` → (`http://host:5000/x`, (user, pw)): urllib cannot open
    a URL with a login in it (it looks up `user:pw@host` as the host name), MLflow's client
    sends it as a basic-auth header."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None:
        return uri, None
    host = parts.netloc.rpartition("@")[2]
    bare = urllib.parse.urlunsplit(parts._replace(netloc=host))
    login = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
    return bare, login
