"""The proxy's own web pages: a page for every run, run lists, a key login.

Server-rendered (Jinja2, autoescaped) with a little plain JavaScript served by the proxy
itself (no CDN, no build step). Everything a run produced is untrusted: it is escaped or
rendered as Markdown without HTML, and the pages forbid inline script.
"""
