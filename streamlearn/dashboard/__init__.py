"""The web dashboard of `streamlearn serve`: the stream, live jobs, storage, accuracy matrix, try-it, submit.

`routes` adds the page (`GET /`), its two assets and the evaluation endpoints to the server's app;
`static/` holds the page (HTML, CSS and JavaScript written for it: no library, nothing fetched from
elsewhere). The page reads the server's JSON endpoints, the same JSON as the CLI's `--json`.
"""
