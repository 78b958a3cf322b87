"""The reward registry's helpers on literal reward functions."""

import asyncio
import inspect
import threading

from autorule.rewards.registry import concurrent, named


def test_a_concurrent_term_is_async_keeps_its_name_and_attributes_and_runs_off_the_loop():
    threads = []

    def length(prompts, completions, **kwargs):
        threads.append(threading.get_ident())
        return [float(len(c)) for c in completions]

    term = named(length, "length")
    term.metrics = lambda: {"length/mean": 1.0}
    wrapped = concurrent(term)
    assert inspect.iscoroutinefunction(wrapped)  # TRL gathers async reward functions
    assert wrapped.__name__ == "length" and wrapped.metrics() == {"length/mean": 1.0}

    async def both():
        return await asyncio.gather(
            wrapped(prompts=["p"], completions=["abc"]), wrapped(prompts=["p"], completions=["ab"])
        )

    assert asyncio.run(both()) == [[3.0], [2.0]]
    assert threading.get_ident() not in threads  # worker threads, not the event loop's
