"""One module per stage. Each exposes ``run(cfg) -> Path`` and ``SPEC``, a
:class:`~autorule.core.stage.StageSpec` saying what it reads and which config decides its output;
training stages also expose ``train(cfg, workdir, inputs, callbacks)`` for launched workers.
Stages are found by name (:func:`autorule.core.stage.load`); nothing lists them here.
"""
