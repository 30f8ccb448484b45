"""The pipeline's stages: each takes the run context (:mod:`llm.context`) and frozen records
(:mod:`llm.stages.records`) and returns frozen records; none reads a config section that is
not its own (``tests/test_architecture.py`` checks it).

=======================  ==========================  =====================================
stage                    reads                       returns
=======================  ==========================  =====================================
:mod:`.tasks`            ``[data]``                  ``Task`` per name (train, eval, valid)
:mod:`.reference`        ``[model]``, ``[sft]``      ``Reference`` (SFT through the driver)
:mod:`.scoring`          ``[eval]``                  ``Scores`` per task (reference log-probs)
:mod:`.specialists`      ``[specialist]``, ``[eval]``  ``Specialist`` per task
:mod:`.default_reference` ``[mix]``                  DoReMi's reference losses per task
:mod:`.generalists`      ``[generalist]``, ``[mix]``   ``GeneralistRun`` per method × seed
:mod:`.merges`           —                           a merged state dict
:mod:`.evaluation`       ``[eval]``                  per-task held-out metrics
=======================  ==========================  =====================================

:mod:`llm.pipeline` composes them; :mod:`llm.specialist_cost` and :mod:`llm.instances`
reuse them in the same context.
"""
