"""``tabby ui``: one web page with the lab's topology, reachability and flow stream.

    browser ──GET /, /app.js, /app.css──> UIServer (server.py) ── static/ (package data)
            ──GET /api/topology─────────>   views.topology(snapshot, lab)        pure
            ──GET /api/matrix───────────>   views.policy_matrix(program, ...)    pure
                                            or the lab's probes (Sources.probe)
            ──GET /api/flows (1 s poll)─>   Sources.flows: every agent's /flows, merged

``views`` computes the JSON from values and does no I/O; ``server`` serves it and
the page; what touches the store, the lab and the agents comes in as ``Sources``
(built by ``tabby.cli.ui``, which reuses ``tabby flows``' reader).
"""
