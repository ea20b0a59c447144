"""Serve the app: `python -m demo` (what `make demo` and `make app` run).

Binds 127.0.0.1:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise. Set
BERTFLEET_APP_AUTH="user:password" (several pairs separated by commas) to require a login; any
address other than loopback refuses to start without it (the app launches training and serves
models: it must not be open to a network).

From a script, with the app running:

    from gradio_client import Client
    app = Client("http://127.0.0.1:7860/")
    exp = app.predict("smoke", api_name="/launch")["experiment_id"]
    app.predict(exp, api_name="/progress")            # poll until "status" is not "running"
    uri = app.predict(exp, api_name="/models")[0]["model_uri"]
    app.predict(uri, ["a gripping, moving film"], api_name="/predict")
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys

# Before gradio is imported: it reads GRADIO_ANALYTICS_ENABLED once.
from orchestration.environment import apply_defaults

apply_defaults()

from demo.app import CSS, I18N, build_app
from demo.upload import MAX_UPLOAD_BYTES


def parse_auth(value: str) -> list[tuple[str, str]] | None:
    """ "user:password[,user2:password2]" -> [(user, password), ...]; None when unset."""
    if not value.strip():
        return None
    pairs = []
    for item in value.split(","):
        user, sep, password = item.strip().partition(":")
        if not (sep and user and password):
            sys.exit("BERTFLEET_APP_AUTH must look like user:password (pairs separated by commas)")
        pairs.append((user, password))
    return pairs


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def main() -> None:
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    auth = parse_auth(os.environ.get("BERTFLEET_APP_AUTH", ""))
    if auth is None and not is_loopback(host):
        sys.exit(
            f"GRADIO_SERVER_NAME={host} would open the app beyond this machine without a login; "
            'set BERTFLEET_APP_AUTH="user:password" (pairs separated by commas), or bind '
            "127.0.0.1"
        )
    # Set explicitly: an app started in the background by a non-interactive shell inherits
    # SIGINT ignored, and then neither Ctrl-C nor `kill -INT` would stop it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    app = build_app()
    app.launch(
        server_name=host,
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        auth=auth,
        css=CSS,
        i18n=I18N,
        footer_links=["api"],
        show_error=True,
        # Gradio refuses bigger uploads before they reach the server; demo.upload checks too.
        max_file_size=MAX_UPLOAD_BYTES,
    )


if __name__ == "__main__":
    main()
