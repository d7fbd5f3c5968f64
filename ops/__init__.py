"""Operations: what an operator sees and does, for every face (the ``erynoa saga|dlq``
commands in ``cli.ops``, the admin API in ``api.routes.admin``, the web console behind it).

* ``ops.assess``: pure judgement — in flight, what a saga waits for, whether it is stuck
  (one rule, per-step ``Expectations``, the deployment's ``Policy``), what a replayed event
  would do to its saga.
* ``ops.sagas``: one saga's timeline, pages of sagas in flight (the stuck ones), cancel and
  retry with a dry run.
* ``ops.dead_letters``: the dead-letter topics and their messages, read without a group.
* ``ops.replay``: a replay's plan and the audited re-drive.
* ``ops.when``, ``ops.errors``, ``ops.wire``: operator times, bad input, JSON values.
* ``ops.invariants``: the invariant checker over what a run leaves behind.

Nothing here prints or reads settings: the faces pass connections, the codec, the catalog and
``Policy.from_settings``.
"""
