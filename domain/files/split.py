"""The held-out TEST split of a fine-tune file, deterministic and shared: the
report shown at upload time (domain/files/validation/) and the trainer and
evaluations (worker/) always agree on which lines are TEST. The same for
every line format (chat, preference, prompt/completion, text): a line's
"split" key wins, the others are drawn by a seeded hash of their bytes. Also
how a worker reads the objects of an already-validated JSONL file. Standard
library only.
"""

from __future__ import annotations

import hashlib
import heapq
from array import array
from collections.abc import Iterable, Iterator

from domain.files.validation.lines import TOO_LONG, LineProblem, LineReader, all_lines, parse_object

TEST_FRACTION = 0.1
DEFAULT_SPLIT_SEED = 0


def _seed_key(seed: int) -> bytes:
    return str(int(seed)).encode("ascii")


class TestDraw:
    """Deterministic 10% test draw, shared with the trainer so training sees the same split.

    Lines are ranked by a seeded hash of their bytes, so the draw depends on
    the lines' content and the seed, not on their order in the file. Ties
    (identical lines) are broken by line number.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, seed: int = DEFAULT_SPLIT_SEED) -> None:
        self.seed = seed
        self._key = _seed_key(seed)
        self._hashes = array("Q")
        self._line_numbers = array("Q")

    @staticmethod
    def test_size(candidates: int) -> int:
        """How many of `candidates` lines without an explicit split go to TEST."""
        if candidates < 2:
            return 0
        return max(1, round(candidates * TEST_FRACTION))

    def add(self, line_no: int, line: bytes) -> None:
        """Add a line (raw bytes WITHOUT the terminator) that has no explicit "split"."""
        digest = hashlib.blake2b(line, digest_size=8, key=self._key).digest()
        self._hashes.append(int.from_bytes(digest, "big"))
        self._line_numbers.append(line_no)

    def __len__(self) -> int:
        return len(self._hashes)

    def test_lines(self) -> set[int]:
        """Line numbers drawn into TEST: the lowest hashes."""
        lowest = heapq.nsmallest(self.test_size(len(self)), zip(self._hashes, self._line_numbers))
        return {line_no for _, line_no in lowest}


def jsonl_objects(chunks: Iterable[bytes]) -> Iterator[tuple[int, dict]]:
    """For an already-validated file: yields (line_no, object) for every
    non-blank line. Raises ValueError on a line that is not a JSON object."""
    for line_no, line in all_lines(LineReader(), chunks):
        if line is None:
            raise ValueError(f"line {line_no}: {TOO_LONG}")
        if not line or line.isspace():
            continue
        try:
            yield line_no, parse_object(line)
        except LineProblem as problem:
            raise ValueError(f"line {line_no}: {problem}") from None


def split_lines(chunks: Iterable[bytes], seed: int = DEFAULT_SPLIT_SEED
                ) -> Iterator[tuple[int, dict, str]]:
    """For an already-validated fine-tune file: yields (line_no, example, "TRAIN"|"TEST")
    for every example, in file order, with exactly the split the validation report counted.

    Raises ValueError on a line that is not a JSON object (the file was not validated).
    """
    reader = LineReader()
    draw = TestDraw(seed)
    examples: list[tuple[int, dict]] = []
    for line_no, line in all_lines(reader, chunks):
        if line is None:
            raise ValueError(f"line {line_no}: {TOO_LONG}")
        if not line or line.isspace():
            continue
        try:
            example = parse_object(line)
        except LineProblem as problem:
            raise ValueError(f"line {line_no}: {problem}") from None
        if "split" not in example:
            draw.add(line_no, line)
        examples.append((line_no, example))
    test = draw.test_lines()
    for line_no, example in examples:
        split = example.get("split") or ("TEST" if line_no in test else "TRAIN")
        yield line_no, example, split
