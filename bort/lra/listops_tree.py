"""ListOps expressions as the LRA generator's trees: build, serialise, parse, measure and evaluate.

LRA's generator keeps an expression as nested pairs and serialises each pair `(left, right)` as
`( <left> <right> )`. An operator with arguments a1..ak is the left-nested chain
`((((op, a1), a2), ...), ak)` closed by `]`, i.e. the pair `(chain, "]")`; a leaf is a digit string. So

    MAX(2, 9)  =  ((("[MAX", "2"), "9"), "]")  ->  "( ( ( [MAX 2 ) 9 ) ] )"

The parentheses therefore carry no information (the model deletes them); the generator's length filter counts
the other symbols (operators, digits and `]`), which `length` returns.

Everything here walks the trees with explicit stacks: the real ListOps release nests 20 operators deep, and a
chain of k arguments adds k pair levels, so recursion could exceed Python's limit on long inputs.
"""
from __future__ import annotations

from typing import Sequence, Union

from .listops import CLOSE, DIGITS, OPERATORS, apply_operator

__all__ = ["Tree", "OPERATORS", "DIGITS", "CLOSE", "operator_node", "serialize", "parse", "evaluate_tree",
           "length", "depth", "arguments"]

# A leaf is a symbol string; an inner node is a pair. (The alias is recursive only in meaning.)
Tree = Union[str, tuple]


def operator_node(operator: str, args: Sequence[Tree]) -> tuple:
    """The tree of `operator` applied to `args` (at least one): the left-nested chain closed by `]`."""
    if operator not in OPERATORS:
        raise ValueError(f"unknown ListOps operator {operator!r}; valid operators: {' '.join(OPERATORS)}")
    if not args:
        raise ValueError(f"{operator} needs at least one argument")
    chain: Tree = operator
    for arg in args:
        chain = (chain, arg)
    return (chain, CLOSE)


def serialize(tree: Tree) -> str:
    """The bracketed token string of `tree` (tokens separated by single spaces), as LRA writes it."""
    out: list[str] = []
    stack: list[object] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            if len(node) != 2:
                raise ValueError(f"a ListOps tree node is a pair, found a tuple of {len(node)}")
            # pushed in reverse: "(", left, right, ")"
            stack.extend((")", node[1], node[0]))
            out.append("(")
        elif isinstance(node, str):
            out.append(node)
        else:
            raise ValueError(f"a ListOps tree holds strings and pairs, found {type(node).__name__}")
    return " ".join(out)


def parse(expression: str) -> Tree:
    """The tree whose serialisation is `expression` (any whitespace between tokens).

    Raises `ValueError` for an unbalanced parenthesis, a parenthesised group that is not a pair, an unknown
    symbol, or other than one tree at the top level.
    """
    valid = set(OPERATORS) | set(DIGITS) | {CLOSE}
    stack: list[list[Tree]] = [[]]
    for position, token in enumerate(expression.split()):
        if token == "(":
            stack.append([])
        elif token == ")":
            if len(stack) == 1:
                raise ValueError(f"')' at token {position} closes no '('")
            group = stack.pop()
            if len(group) != 2:
                raise ValueError(f"the group closed at token {position} holds {len(group)} items; every "
                                 "parenthesised group of the serialisation is a pair")
            stack[-1].append((group[0], group[1]))
        elif token in valid:
            stack[-1].append(token)
        else:
            raise ValueError(f"unknown ListOps symbol {token!r} at token {position}; valid symbols: "
                             f"{' '.join(sorted(valid))} and parentheses")
    if len(stack) != 1:
        raise ValueError(f"{len(stack) - 1} '(' left open at the end")
    if len(stack[0]) != 1:
        raise ValueError(f"expected one tree at the top level, found {len(stack[0])}")
    return stack[0][0]


def arguments(node: tuple) -> tuple[str, list[Tree]]:
    """(operator, argument trees) of an operator node `(chain, "]")`; `ValueError` if it is not one."""
    if not (isinstance(node, tuple) and len(node) == 2 and node[1] == CLOSE):
        raise ValueError("not an operator node: expected the pair (chain, ']')")
    chain, args = node[0], []
    while isinstance(chain, tuple):
        chain, arg = chain
        args.append(arg)
    if chain not in OPERATORS:
        raise ValueError(f"an operator chain must start with one of {' '.join(OPERATORS)}, found {chain!r}")
    if not args:
        raise ValueError(f"{chain} has no arguments")
    args.reverse()
    return chain, args


def evaluate_tree(tree: Tree) -> int:
    """The value (0-9) of `tree`, computed on the tree itself (post-order, explicit stack)."""
    # Frames: [operator, pending argument trees (reversed), values so far]; a finished frame's value goes
    # to the frame below it.
    result: list[int] = []

    def value_of_leaf(leaf: str) -> int:
        if leaf not in DIGITS:
            raise ValueError(f"a ListOps argument must be a digit or an operator node, found {leaf!r}")
        return int(leaf)

    if isinstance(tree, str):
        return value_of_leaf(tree)
    operator, args = arguments(tree)
    frames: list[tuple[str, list[Tree], list[int]]] = [(operator, args[::-1], [])]
    while frames:
        operator, pending, values = frames[-1]
        if pending:
            arg = pending.pop()
            if isinstance(arg, str):
                values.append(value_of_leaf(arg))
            else:
                op, sub = arguments(arg)
                frames.append((op, sub[::-1], []))
            continue
        frames.pop()
        (frames[-1][2] if frames else result).append(apply_operator(operator, values))
    return result[0]


def length(tree: Tree) -> int:
    """The generator's length of `tree`: its operators, digits and `]` (every symbol but parentheses)."""
    count, stack = 0, [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            stack.extend(node)
        else:
            count += 1
    return count


def depth(tree: Tree) -> int:
    """Operator nesting depth: 0 for a digit, 1 for an operator over digits, and so on."""
    if isinstance(tree, str):
        return 0
    best, stack = 0, [(tree, 1)]
    while stack:
        node, level = stack.pop()
        best = max(best, level)
        for arg in arguments(node)[1]:
            if isinstance(arg, tuple):
                stack.append((arg, level + 1))
    return best
