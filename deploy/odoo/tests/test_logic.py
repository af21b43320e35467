"""The holdfast_inbox addon's decision logic, without Odoo: run with ``python3 -m pytest deploy/odoo``."""

import copy
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "holdfast_inbox"))
import logic  # noqa: E402


class FakeOdoo:
    """Records, external ids and the inbox table in memory; each call runs on a copy that is
    kept only when it succeeds, as a savepoint does."""

    def __init__(self, budget=100.0):
        self.records = {"mrp.production": {7: {"name": "WH/MO/00007", "qty_producing": 0}, 8: {"name": "WH/MO/00008", "qty_producing": 0}}}
        self.xmlids = {"stock.stock_location_stock": 5}
        self.inbox = {}
        self.calls = []
        self.budget = budget
        self.newest_epoch = 0

    def env(self):
        return logic.Env(
            recorded=lambda i: (True, self.inbox[i]) if i in self.inbox else (False, None),
            search=self.search,
            xmlid=self.xmlids.get,
            run=self.run,
            time_left=self.time_left,
            name_of=lambda e: "%s.%s" % (type(e).__module__, type(e).__name__),
            fence=self.fence,
        )

    def fence(self, epoch):
        self.newest_epoch = max(self.newest_epoch, epoch)
        return self.newest_epoch

    def time_left(self):
        self.budget -= 1
        return self.budget

    def search(self, model, domain):
        return [i for i, r in self.records.get(model, {}).items() if all(r.get(f) == v for f, _, v in domain)]

    def run(self, model, method, args, kwargs, txn_id, check):
        saved = copy.deepcopy((self.records, self.inbox))
        try:
            self.calls.append((model, method, args, kwargs))
            if method == "write":
                ids, values = args
                for i in ids:
                    if values.get("qty_producing", 0) < 0:
                        raise logic.Refusal("odoo.exceptions.ValidationError", "The quantity must be positive")
                    self.records[model][i].update(values)
                result = True
            elif method == "create":
                new = max(self.records.setdefault(model, {0: {}}), default=0) + 1
                self.records[model][new] = dict(args[0])
                result = new
            elif method == "boom":
                raise ZeroDivisionError("division by zero")
            elif method == "answer":
                self.records[model][args[0]]["answered"] = True
                result = args[1]
            else:
                raise logic.Refusal("odoo.exceptions.UserError", "no method %s" % method)
            check(result)
            self.inbox[txn_id] = result
            return result
        except BaseException:
            self.records, self.inbox = saved
            raise


def write(txn, key, mo, qty):
    return {"id": txn, "order_key": key, "model": "mrp.production", "method": "write",
            "args": [[{"$ref": {"model": "mrp.production", "domain": [["name", "=", mo]]}}], {"qty_producing": qty}], "kwargs": {}}


def statuses(answers):
    return [a["status"] for a in answers]


def test_a_recorded_id_is_a_duplicate_with_its_result_and_runs_nothing():
    odoo = FakeOdoo()
    first = logic.apply_batch([write("t1", "a", "WH/MO/00007", 1)], odoo.env())
    assert first == [{"id": "t1", "status": "applied", "result": True}]
    again = logic.apply_batch([write("t1", "a", "WH/MO/00007", 1)], odoo.env())
    assert again == [{"id": "t1", "status": "duplicate", "result": True}]
    assert len(odoo.calls) == 1


def test_a_failure_skips_the_rest_of_its_key_only_and_is_not_recorded():
    odoo = FakeOdoo()
    answers = logic.apply_batch(
        [
            write("t1", "a", "WH/MO/09999", 1),
            write("t2", "a", "WH/MO/00007", 2),
            write("t3", "b", "WH/MO/00008", -1),
            write("t4", "c", "WH/MO/00008", 4),
        ],
        odoo.env(),
    )
    assert statuses(answers) == ["failed", "not_executed", "failed", "applied"]
    assert answers[0]["error"] == {
        "name": "odoo.exceptions.UserError",
        "message": 'reference mrp.production [["name","=","WH/MO/09999"]] matched 0 records; exactly one must match',
    }
    assert answers[2]["error"]["name"] == "odoo.exceptions.ValidationError"
    assert set(odoo.inbox) == {"t4"}, "only successes are recorded: a retry after a fix runs again"
    assert odoo.records["mrp.production"][8]["qty_producing"] == 4, "the failed write left nothing"
    # The operator fixed the data: the retry runs.
    odoo.records["mrp.production"][9] = {"name": "WH/MO/09999", "qty_producing": 0}
    assert statuses(logic.apply_batch([write("t1", "a", "WH/MO/09999", 1)], odoo.env())) == ["applied"]


def test_private_methods_are_refused_as_odoo_refuses_them():
    odoo = FakeOdoo()
    answers = logic.apply_batch([{"id": "t1", "order_key": "a", "model": "res.users", "method": "_sudo", "args": []}], odoo.env())
    assert answers[0]["error"] == {
        "name": "odoo.exceptions.AccessError",
        "message": "Private methods (such as res.users._sudo) cannot be called remotely.",
    }
    assert odoo.calls == []


def test_references_resolve_in_the_same_transaction_xmlid_and_result_included():
    odoo = FakeOdoo()
    create = {"id": "t1", "order_key": "a", "model": "stock.quant", "method": "create",
              "args": [{"location_id": {"$xmlid": "stock.stock_location_stock"}, "quantity": 3}]}
    follow = {"id": "t2", "order_key": "a", "model": "stock.quant", "method": "write",
              "args": [[{"$result": {"id": "t1"}}], {"quantity": 4}]}
    answers = logic.apply_batch([create, follow], odoo.env())
    assert statuses(answers) == ["applied", "applied"]
    new_id = answers[0]["result"]
    assert odoo.records["stock.quant"][new_id] == {"location_id": 5, "quantity": 4}
    missing = {"id": "t3", "order_key": "b", "model": "stock.quant", "method": "write",
               "args": [[{"$result": {"id": "t9"}}], {}]}
    bad_xmlid = {"id": "t4", "order_key": "c", "model": "stock.quant", "method": "create",
                 "args": [{"location_id": {"$xmlid": "stock.nowhere"}}]}
    answers = logic.apply_batch([missing, bad_xmlid], odoo.env())
    assert [a["error"]["message"] for a in answers] == [
        "reference $result names transaction t9, which is not applied",
        "reference $xmlid 'stock.nowhere' does not exist",
    ]


def test_a_result_path_picks_inside_the_recorded_result():
    odoo = FakeOdoo()
    odoo.inbox["t0"] = {"ids": [11, 12]}
    assert logic.resolve({"$result": {"id": "t0", "path": ["ids", 1]}}, odoo.env()) == 12
    with pytest.raises(logic.Refusal) as refused:
        logic.resolve({"$result": {"id": "t0", "path": ["nope"]}}, odoo.env())
    assert refused.value.message == "reference $result t0 has nothing at 'nope'"


def test_unexpected_exceptions_are_answered_by_their_dotted_name():
    odoo = FakeOdoo()
    answers = logic.apply_batch([{"id": "t1", "order_key": "a", "model": "x.y", "method": "boom", "args": []}], odoo.env())
    assert answers[0]["error"] == {"name": "builtins.ZeroDivisionError", "message": "division by zero"}


def test_the_batch_stops_starting_transactions_when_its_time_budget_is_spent():
    odoo = FakeOdoo(budget=3)
    batch = [write("t%d" % n, "k%d" % n, "WH/MO/00007", n) for n in range(1, 6)]
    answers = logic.apply_batch(batch, odoo.env())
    assert statuses(answers) == ["applied", "applied", "not_executed", "not_executed", "not_executed"]
    assert answers[2]["reason"] == "time budget spent"
    assert set(odoo.inbox) == {"t1", "t2"}


def test_malformed_batches_are_refused_whole():
    odoo = FakeOdoo()
    with pytest.raises(logic.Refusal) as refused:
        logic.apply_batch({"id": "t1"}, odoo.env())
    assert refused.value.message == "apply_batch() needs a list of transactions"
    with pytest.raises(logic.Refusal) as refused:
        logic.apply_batch([{"order_key": "a"}], odoo.env())
    assert refused.value.message == "each transaction needs an id"


def answering(txn, key, result):
    """A call on WH/MO/00007 that returns ``result``."""
    return {"id": txn, "order_key": key, "model": "mrp.production", "method": "answer", "args": [7, result]}


def test_wizards_and_unknown_actions_fail_roll_back_and_block_their_key_but_closing_and_notifications_succeed():
    odoo = FakeOdoo()
    backorder = {"name": "Create Backorder?", "type": "ir.actions.act_window", "res_model": "stock.backorder.confirmation",
                 "view_mode": "form", "target": "new", "context": {}}
    form = {"type": "ir.actions.act_window", "res_model": "stock.picking", "res_id": 42}
    notification = {"type": "ir.actions.client", "tag": "display_notification", "params": {"message": "Done"}}
    batch = [
        answering("t1", "a", backorder),
        answering("t2", "a", True),
        answering("t3", "b", form),
        answering("t4", "c", {"type": "ir.actions.act_window_close"}),
        answering("t5", "d", notification),
    ]
    answers = logic.apply_batch(batch, odoo.env())
    assert statuses(answers) == ["failed", "not_executed", "failed", "applied", "applied"]
    assert answers[0]["error"] == {
        "name": "holdfast.Wizard",
        "message": "Odoo asks a person to decide in the stock.backorder.confirmation wizard (Create Backorder?)",
    }
    assert answers[2]["error"] == {
        "name": "holdfast.UnknownAction",
        "message": '{"res_id":42,"res_model":"stock.picking","type":"ir.actions.act_window"}',
    }
    assert set(odoo.inbox) == {"t4", "t5"}, "a wizard is not recorded: after a person acts, a retry runs again"
    # t4 and t5 changed the record, t1 and t3 were rolled back: t4 set it, and nothing undid it.
    assert odoo.records["mrp.production"][7]["answered"] is True


def test_a_load_that_answers_errors_fails_with_its_messages():
    odoo = FakeOdoo()
    refused = {"ids": False, "messages": [{"type": "error", "message": "No matching record found for external id 'x.y' in field 'product_id'", "record": 0}]}
    answers = logic.apply_batch([answering("t1", "a", refused), answering("t2", "b", {"ids": [9], "messages": []})], odoo.env())
    assert statuses(answers) == ["failed", "applied"]
    assert answers[0]["error"] == {"name": "holdfast.LoadRefused", "message": "No matching record found for external id 'x.y' in field 'product_id'"}
    assert "answered" in odoo.records["mrp.production"][7]
    assert set(odoo.inbox) == {"t2"}


def test_a_batch_of_an_older_leader_epoch_runs_nothing_and_a_newer_one_is_recorded_first():
    odoo = FakeOdoo()
    env = odoo.env()
    assert statuses(logic.apply_batch([write("t1", "a", "WH/MO/00007", 1.0)], env, epoch=3)) == ["applied"]
    assert odoo.newest_epoch == 3
    # The deposed leader (epoch 2) sends a batch after epoch 3 was seen: nothing runs.
    answers = logic.apply_batch([write("t2", "a", "WH/MO/00007", 2.0), write("t1", "a", "WH/MO/00007", 1.0)], env, epoch=2)
    assert answers == [
        {"id": "t2", "status": "not_executed", "reason": "stale_epoch: sent under lease epoch 2; epoch 3 leads now"},
        {"id": "t1", "status": "not_executed", "reason": "stale_epoch: sent under lease epoch 2; epoch 3 leads now"},
    ]
    assert odoo.records["mrp.production"][7]["qty_producing"] == 1.0
    assert "t2" not in odoo.inbox
    # The same epoch again, a newer one, and no epoch at all (a hub on its own) all run.
    assert statuses(logic.apply_batch([write("t2", "a", "WH/MO/00007", 2.0)], env, epoch=3)) == ["applied"]
    assert statuses(logic.apply_batch([write("t3", "a", "WH/MO/00007", 3.0)], env, epoch=4)) == ["applied"]
    assert statuses(logic.apply_batch([write("t4", "a", "WH/MO/00007", 4.0)], env)) == ["applied"]
    assert odoo.newest_epoch == 4


@pytest.mark.parametrize("epoch", [0, -1, "3", True, 1.5])
def test_an_epoch_that_is_not_a_positive_integer_is_refused(epoch):
    with pytest.raises(logic.Refusal) as refused:
        logic.apply_batch([write("t1", "a", "WH/MO/00007", 1.0)], FakeOdoo().env(), epoch=epoch)
    assert refused.value.name == "odoo.exceptions.ValidationError"
    assert refused.value.message == "epoch must be a positive integer"
