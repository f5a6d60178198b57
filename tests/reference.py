"""Independent reference computations that tests compare the library against."""


def best_stop(errors: dict[int, float], budget: int, every: int) -> tuple[int, float]:
    """(iteration, error) a held-out checkpoint selector should keep for ``budget``: the earliest
    lowest of ``errors`` (``{iteration: error}``) over the multiples of ``every`` up to
    ``budget``, and ``budget`` itself."""
    candidates = [
        (err, it)
        for it, err in errors.items()
        if it == budget or (it <= budget and it % every == 0)
    ]
    err, it = min(candidates)
    return it, err
