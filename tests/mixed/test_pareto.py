from hypothesis import given
from hypothesis import strategies as st

from eaq.mixed import best_within, dominates, pareto_front


def test_front_example():
    assert pareto_front([1.0, 0.5, 0.6, 0.2], [90.0, 89.0, 80.0, 10.0]) == [3, 1, 0]
    assert pareto_front([], []) == []


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 100)), min_size=1, max_size=30))
def test_front_is_exactly_the_non_dominated_points(points):
    e = [p[0] for p in points]
    a = [p[1] for p in points]
    front = set(pareto_front(e, a))
    for i in range(len(points)):
        dominated = any(dominates(e[j], a[j], e[i], a[i]) for j in range(len(points)))
        if i in front:
            assert not dominated
        elif not dominated:  # a duplicate of a front point
            assert any((e[j], a[j]) == (e[i], a[i]) for j in front)


def test_best_within_reads_the_front_at_an_energy():
    e, a = [1.0, 0.5, 0.6, 0.2], [90.0, 89.0, 89.5, 10.0]
    assert best_within(e, a, 0.6) == 2  # 0.6 is affordable at exactly 0.6
    assert best_within(e, a, 0.59) == 1
    assert best_within(e, a, 0.1) is None
    assert best_within([0.3, 0.2], [80.0, 80.0], 1.0) == 1  # a tie keeps the cheaper point


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 100)), min_size=1, max_size=30))
def test_best_within_is_the_front_point_below_the_limit(points):
    e = [p[0] for p in points]
    a = [p[1] for p in points]
    limit = 0.5
    i = best_within(e, a, limit)
    inside = [j for j in range(len(e)) if e[j] <= limit]
    if not inside:
        assert i is None
    else:
        assert e[i] <= limit and a[i] == max(a[j] for j in inside)
