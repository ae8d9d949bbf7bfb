"""When a collector process lets Python's cyclic garbage collector run (issue 16).

Nearly everything a collector makes per message — its receive record, decoded row, value tuple, batch entries — is
freed by reference counting once its batch has committed; the cyclic collector finds no garbage in it. It still
walks those objects: a collection of the youngest generation starts whenever the number of container objects
alive has grown by its threshold since the last one, and walks every young object still alive.

At Python's default threshold (700) it ran every ~70 messages; 50,000, with what is alive at start moved out of its
sight (``gc.freeze``), cut 7 % of the instructions per decoded message (valgrind, 20,000 harness messages in batches
of 5,000). A draining collector still crossed 50,000 every 18,000 messages or so, because the messages in flight
alone are more objects than that: a collector with the default queue and batch sizes peaked at 107,206
(``gc.get_count()`` sampled every 50 ms while it drained 1,000,000 harness readings, collections held off). It ran
56 collections of the youngest generation in that drain, which took 1.35 s (timed by ``gc.callbacks``) and freed
nothing, and cost 14 % of its CPU per reading (docs/benchmarks.md).

So the threshold now lies above what the configured queue and batches can hold: ``OBJECTS_PER_MESSAGE`` for every
message the collector may have in flight. Collections then come only from real growth — reference cycles that are
garbage, or a leak — and still come: garbage cycles are collected after at most that many objects.
"""

from __future__ import annotations

import gc

from sanitel.settings import Settings

# Container objects a message keeps alive while in flight, with headroom: its receive record, the decoded message
# and its row, value tuple and lists, the writer's batch entry and last-seen tuple — about ten; at the defaults
# the peak measured (107,206 for 35,000 messages in flight at most) is under a third of the threshold this gives.
OBJECTS_PER_MESSAGE = 10
LEAST_YOUNG_THRESHOLD = 50_000  # the collector's threshold before this module; never less
OLDER_THRESHOLDS = (20, 20)  # young collections per middle one, middle per full (Python's default: 10, 10)


def messages_in_flight(settings: Settings) -> int:
    """The most messages one collector process holds: its queue, the batch being decoded and one per commit lane."""
    return settings.collector_queue_max + (settings.collector_commit_lanes + 1) * settings.collector_batch_size


def young_generation_threshold(settings: Settings) -> int:
    return max(LEAST_YOUNG_THRESHOLD, OBJECTS_PER_MESSAGE * messages_in_flight(settings))


def collect_cycles_less_often(settings: Settings) -> None:
    """For a collector process that has started: what is alive now (modules, settings, caches) is moved out of the
    cyclic collector's sight (``gc.freeze``), and it runs only once the objects alive outgrow what the messages in
    flight account for."""
    gc.freeze()
    gc.set_threshold(young_generation_threshold(settings), *OLDER_THRESHOLDS)
