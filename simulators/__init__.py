"""Simulated devices for tests, demos and load: device models per kind, scenarios as data, fault
injection with ground truth, and a QoS 1 publisher. See simulators/README.md.

Module map (follow the data): ``scenario`` (YAML → validated Scenario) → ``fleet`` (Scenario → device
models in ``models/``) → ``run`` (the agenda steps the models; ``faults`` alters readings and messages;
``encode`` makes bytes) → ``publisher`` (QoS 1 to a broker); ``truth`` records what was injected,
``contract`` checks messages against ``schemas/``, ``cli`` is ``sanitel simulate``."""
