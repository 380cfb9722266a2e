"""The engine's own API page at /docs: plain HTML made from the OpenAPI document, with no scripts.

FastAPI's interactive pages fetch Swagger UI / ReDoc scripts from a CDN; a page of a local engine
that runs someone else's scripts is a way in, so the engine lists its routes itself and links to
/openapi.json for tools that want the whole contract.
"""

from __future__ import annotations

from html import escape

_METHODS = ("get", "post", "put", "patch", "delete")


def docs_html(schema: dict) -> str:
    """An HTML page listing every operation of `schema` with its summary and description."""
    rows = []
    for path, operations in sorted(schema.get("paths", {}).items()):
        for method in _METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            text = operation.get("description") or ""
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{escape(path)}</code></td>"
                f"<td>{escape(operation.get('summary', ''))}<br><small>{escape(text)}</small></td></tr>"
            )
    info = schema.get("info", {})
    title = escape(f"{info.get('title', 'API')} {info.get('version', '')}")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:.3em .8em;vertical-align:top}"
        "tr:nth-child(even){background:#f4f4f4}</style></head><body>"
        f"<h1>{title}</h1><p>{escape(info.get('summary', ''))}</p>"
        "<p>The full contract: <a href='openapi.json'>openapi.json</a> (OpenAPI 3). Jobs are posted to "
        "<code>/v1/jobs</code> as JSON or as multipart/form-data with a <code>params</code> field and one file "
        "part per input.</p>"
        f"<table>{''.join(rows)}</table></body></html>"
    )
