from eaq.study.report import method_label


def _row(method, options=None):
    return {"method": method, "info": {"method_options": options or {}}}


def test_a_method_that_hands_over_is_labelled_with_its_chain():
    assert method_label(_row("qdrop")) == "qdrop"
    assert method_label(_row("repq", {"then": "qdrop"})) == "repq → qdrop"
    assert method_label(_row("cle")) == "cle → ptq"  # its default hand-over
    assert method_label(_row("cle", {"then": "repq"})) == "cle → repq → ptq"
    assert method_label(_row("none")) == "none"
