"""``rlhfkit studio``: human feedback collected in a browser, exported in the trainers' formats.

Modules: :mod:`.db` (SQLAlchemy storage, schema versions), :mod:`.server` (FastAPI app),
:mod:`.importers` (items from trainer files, Label Studio, Argilla, or sampled from models),
:mod:`.export` (aggregation, trainer rows, ``studio://`` data paths), :mod:`.progress` (admin
progress; agreement from :mod:`.agreement` when present), :mod:`.humaneval` (blind A/B human
evaluation of two models, read by ``rlhfkit eval --human``), :mod:`.human_loop` (people as the
labeller of ``rlhfkit online-dpo --labeller studio``), :mod:`.cli`.

HTTP API (JSON bodies; ``Authorization: Bearer TOKEN`` or the cookie set by ``/api/login``;
401 = no/unknown/expired token, 403 = not assigned / not an admin, 404 = unknown project or
item, 409 = item already labelled differently by this annotator, 422 = invalid body with the
field named; a refused request writes nothing):

=======  ==========================================  ==============================================
method   path                                        what
=======  ==========================================  ==============================================
GET      /api/health                                 ``{"ok", "schema_version"}`` (no token)
POST     /api/login                                  ``{"token"}`` -> ``{"name","is_admin","projects"}``
                                                     and the HttpOnly ``studio_token`` cookie
POST     /api/logout                                 clears the cookie (204)
GET      /api/me                                     ``{"name","is_admin","projects":[...]}``
GET      /api/projects                               projects the caller may label (admin: all):
                                                     ``{"projects":[{"name","kind","overlap","items"}]}``
GET      /api/projects/{p}                           ``{"name","kind","guidelines","overlap"}``
GET      /api/projects/{p}/next                      ``{"item": {"id","position","prompt","responses"}
                                                     | null, "done","total","kind"}``: the caller's
                                                     next item (resumes an unlabelled one served
                                                     before); responses in this annotator's order
POST     /api/projects/{p}/items/{id}/label          a label, positions as shown (A = first):
                                                     pairwise ``{"choice": "A"|"B"|"tie"|"both_bad",
                                                     "strength": 1-3|null}``; ranking ``{"ranks":
                                                     [1 = best, ties allowed]}``; thumbs ``{"thumbs":
                                                     [true|false]}``; rating ``{"ratings": [1-7]}``;
                                                     all: ``"rationale"``, ``"idempotency_key"``.
                                                     201 ``{"label","created": true}``; a retry of
                                                     the same label: 200 with ``created`` false
POST     /api/projects/{p}/items/{id}/skip           skip the item (frees it for another annotator)
POST     /api/projects/{p}/undo                      delete the caller's last label or skip:
                                                     ``{"undone_item": id | null}``
GET      /api/admin/projects/{p}/progress            admin: items done, labels/skips/median seconds
                                                     per annotator, agreement (or why unavailable)
GET      /api/admin/projects/{p}/export              admin: ``?format=pairs|listwise|unpaired&
                                                     aggregate=majority|unanimous&drop_ties=&
                                                     min_agreement=&min_labels=`` -> ``{"rows","stats"}``
POST     /api/admin/users                            admin: ``{"name","admin","expires_days"}`` ->
                                                     ``{"name","token"}`` (the token is shown once)
POST     /api/admin/projects                         admin: ``{"name","kind","rows":[...],"filename",
                                                     "format","guidelines","overlap","assign":[...],
                                                     "seed","gold_rows"}``; rows validated as a file's (errors
                                                     name ``filename``, row and field)
POST     /api/admin/projects/{p}/assign              admin: ``{"users":[...]}``
=======  ==========================================  ==============================================

Pages: ``/`` (sign in with a token), ``/label?project=P`` (guidelines beside the item, keyboard
shortcuts), ``/admin`` (progress and agreement; new projects from an uploaded file, new accounts), ``/items/{id}?project=P`` (a printable,
server-escaped view of one item).

Labels are stored in the items' stored response order (``value``) together with the order
shown (``shown_order[k]`` = stored index at position k), so position bias can be measured. The
order is a permutation drawn from ``random.Random("seed:annotator:item")``: the same on every
reload. Time per item is measured by the server from the moment the item is first served.
"""
