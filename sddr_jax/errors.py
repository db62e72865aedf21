"""Errors meant for the user: raised at the boundary (CLI, file readers, converter, public functions)."""


class UserError(ValueError):
    """A problem with the user's input; the CLI prints it as one line and exits with code 2."""


def storage_problem(e: BaseException) -> str:
    """A short reason, in our words, for an exception raised while reading an Orbax / TensorStore folder."""
    text = str(e)
    if type(e).__name__ == "JSONDecodeError" or any(
            k in text for k in ("OUT_OF_RANGE", "byte range", "Error opening zarr", "Error reading")):
        return "a data file is truncated or corrupt (shorter than its index says; was the save interrupted?)"
    if "NOT_FOUND" in text or isinstance(e, FileNotFoundError):
        return "a data file is missing (was the save interrupted?)"
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
