"""Benchmarks: datasets, baselines, the evaluation protocol, and the scripts that produce the result tables.

=============================  ===========================================================================
module                         idea
=============================  ===========================================================================
``protocol/``                  the one evaluation protocol (preferences, loss space and hypervolume,
                               records, cost, summary metrics, targets, training budget, report) of both
                               pipelines
``methods``, ``baselines/``    the compared methods behind one interface
``config``                     CPU benchmark presets and :class:`~benchmarks.config.RunConfig`
``loaders``                    the data slices every method of a run sees
``estimate``                   per-step costs, the run's estimate, the ETA clock
``views``                      what the plots show of a trained controller; ``plots`` draws them
``orchestrate``                one CPU benchmark run, seed by seed
``partial``                    resuming an interrupted run from its results file and saved controllers
``run``                        its command line (``python -m benchmarks.run``)
``paper_tasks``                the paper's task sets and anchors (registered with dymu on import; also
                               the ``dymu.task_sets`` entry points)
``paper_config``, ``paper_data``  a paper run's config and steps; its splits, loaders and backbone
``paper``                      the paper pipeline and its command line (``python -m benchmarks.paper``)
``options``                    command lines generated from config dataclasses
``speed``                      the speed benchmark
=============================  ===========================================================================

Importing this package imports nothing else.
"""
