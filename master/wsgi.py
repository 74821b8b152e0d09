"""WSGI entry point for any server: ``gunicorn master.wsgi:app`` (config from PKGFARM_CONFIG)."""

from master.app import create_app

app = create_app()
