//! The double's database: records by model, external ids, and the methods shop-floor
//! transactions call, with Odoo's exception names for what Odoo would refuse.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

/// An Odoo exception, by the name JSON-RPC reports in `error.data.name`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub name: &'static str,
    pub message: String,
}

impl Fault {
    pub fn user(message: impl Into<String>) -> Self {
        Self { name: "odoo.exceptions.UserError", message: message.into() }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self { name: "odoo.exceptions.ValidationError", message: message.into() }
    }
    pub fn access(message: impl Into<String>) -> Self {
        Self { name: "odoo.exceptions.AccessError", message: message.into() }
    }
    pub fn missing(message: impl Into<String>) -> Self {
        Self { name: "odoo.exceptions.MissingError", message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { name: "werkzeug.exceptions.NotFound", message: message.into() }
    }
    pub fn attribute(message: impl Into<String>) -> Self {
        Self { name: "builtins.AttributeError", message: message.into() }
    }
    pub fn value(message: impl Into<String>) -> Self {
        Self { name: "builtins.ValueError", message: message.into() }
    }
}

pub type Record = Map<String, Value>;

/// Models the double knows.
pub const MODELS: [&str; 12] = [
    "ir.model.data",
    "ir.module.module",
    "res.users",
    "product.product",
    "mrp.production",
    "stock.location",
    "stock.picking.type",
    "stock.picking",
    "stock.move",
    "stock.move.line",
    "stock.quant",
    "holdfast.inbox",
];

/// Many2one fields and the model they point to, for dotted domain paths such as
/// `picking_id.picking_type_id.barcode`.
const RELATIONS: [(&str, &str, &str); 10] = [
    ("stock.picking", "picking_type_id", "stock.picking.type"),
    ("stock.picking", "location_dest_id", "stock.location"),
    ("stock.move", "picking_id", "stock.picking"),
    ("stock.move", "product_id", "product.product"),
    ("stock.move.line", "picking_id", "stock.picking"),
    ("stock.move.line", "move_id", "stock.move"),
    ("stock.move.line", "product_id", "product.product"),
    ("stock.quant", "product_id", "product.product"),
    ("stock.quant", "location_id", "stock.location"),
    ("mrp.production", "product_id", "product.product"),
];

fn relation(model: &str, field: &str) -> Option<&'static str> {
    RELATIONS.iter().find(|(m, f, _)| *m == model && *f == field).map(|(_, _, target)| *target)
}

/// The in-memory database.
#[derive(Clone, Debug, Default)]
pub struct Db {
    pub records: BTreeMap<String, BTreeMap<i64, Record>>,
    pub xmlids: HashMap<String, (String, i64)>,
    next_id: i64,
    /// Open savepoints, innermost last: for each, what to put back on a rollback.
    undo: Vec<Vec<Undo>>,
    /// Odoo 16.0's stock flow: done quantities on move lines (`qty_done`), and the immediate
    /// transfer wizard (`skip_immediate`); 17.0 and 18.0 set `quantity` on moves.
    pub v16: bool,
}

/// What a change inside a savepoint replaced.
#[derive(Clone, Debug)]
enum Undo {
    Record { model: String, id: i64, before: Option<Record> },
    Xmlid { name: String, before: Option<(String, i64)> },
    NextId(i64),
}

impl Db {
    /// A database with the records the example configs and tests use: the hub's user (id 2),
    /// products with barcodes, stock locations and manufacturing orders `WH/MO/00001` onwards.
    pub fn seeded(manufacturing_orders: i64) -> Self {
        let mut db = Db { next_id: 100, ..Default::default() };
        db.insert_with_id("res.users", 2, json!({"login": "holdfast-hub", "name": "Holdfast hub"}));
        for (name, state) in [("base", "installed"), ("stock", "installed"), ("mrp", "installed")] {
            db.create("ir.module.module", json!({"name": name, "state": state}));
        }
        db.xmlids.insert("base.user_admin".into(), ("res.users".into(), 2));
        for (i, (barcode, code)) in
            [("5901234123457", "BOLT-M8"), ("4006381333931", "NUT-M8"), ("8712345678906", "WASHER-8")]
                .iter()
                .enumerate()
        {
            let id = db.create("product.product", json!({"name": code, "default_code": code, "barcode": barcode}));
            db.xmlids.insert(format!("holdfast_demo.product_{}", i + 1), ("product.product".into(), id));
        }
        let stock = db.create("stock.location", json!({"name": "WH/Stock", "complete_name": "WH/Stock"}));
        db.xmlids.insert("stock.stock_location_stock".into(), ("stock.location".into(), stock));
        let receipts =
            db.create("stock.picking.type", json!({"name": "Receipts", "code": "incoming", "barcode": "WH-RECEIPTS"}));
        let picking = db.create(
            "stock.picking",
            json!({"name": "WH/IN/00001", "state": "assigned", "picking_type_id": receipts, "location_dest_id": stock}),
        );
        let products: Vec<i64> = db.records["product.product"].keys().copied().collect();
        for product in products {
            db.create(
                "stock.move",
                json!({"picking_id": picking, "product_id": product, "product_uom_qty": 100.0, "quantity": 0.0, "picked": false, "state": "assigned"}),
            );
        }
        for n in 1..=manufacturing_orders {
            db.create("mrp.production", json!({"name": format!("WH/MO/{n:05}"), "state": "confirmed", "product_qty": 100.0, "qty_producing": 0.0}));
        }
        db
    }

    /// Runs `f` in a savepoint: when it fails, every change it made is undone (as Odoo rolls a
    /// call or a savepoint back); when it succeeds, its changes join the enclosing savepoint.
    /// Only what changes is copied, so a savepoint costs what the call touches.
    pub fn savepoint<T, E>(&mut self, f: impl FnOnce(&mut Db) -> Result<T, E>) -> Result<T, E> {
        self.undo.push(vec![Undo::NextId(self.next_id)]);
        let out = f(self);
        let frame = self.undo.pop().expect("pushed above");
        match (&out, self.undo.last_mut()) {
            (Ok(_), Some(outer)) => outer.extend(frame),
            (Ok(_), None) => {}
            (Err(_), _) => {
                for change in frame.into_iter().rev() {
                    match change {
                        Undo::Record { model, id, before: Some(rec) } => {
                            self.records.entry(model).or_default().insert(id, rec);
                        }
                        Undo::Record { model, id, before: None } => {
                            self.records.get_mut(&model).map(|m| m.remove(&id));
                        }
                        Undo::Xmlid { name, before: Some(target) } => {
                            self.xmlids.insert(name, target);
                        }
                        Undo::Xmlid { name, before: None } => {
                            self.xmlids.remove(&name);
                        }
                        Undo::NextId(n) => self.next_id = n,
                    }
                }
            }
        }
        out
    }

    /// Notes a record's value before a change, inside a savepoint.
    fn touch(&mut self, model: &str, id: i64) {
        if let Some(frame) = self.undo.last_mut() {
            let before = self.records.get(model).and_then(|m| m.get(&id)).cloned();
            frame.push(Undo::Record { model: model.to_owned(), id, before });
        }
    }

    /// Sets an external id, inside a savepoint or not.
    pub fn set_xmlid(&mut self, name: String, target: (String, i64)) {
        let before = self.xmlids.insert(name.clone(), target);
        if let Some(frame) = self.undo.last_mut() {
            frame.push(Undo::Xmlid { name, before });
        }
    }

    /// As [`Self::seeded`], the way Odoo 16.0 holds it: each move of the receipt has a move line
    /// whose `qty_done` is what was done.
    pub fn seeded_16(manufacturing_orders: i64) -> Self {
        let mut db = Self::seeded(manufacturing_orders);
        db.v16 = true;
        let moves: Vec<Record> = db.records["stock.move"].values().cloned().collect();
        for m in moves {
            db.create(
                "stock.move.line",
                json!({"move_id": m["id"], "picking_id": m["picking_id"], "product_id": m["product_id"],
                       "reserved_uom_qty": m["product_uom_qty"], "qty_done": 0.0}),
            );
            let rec = db.get_mut("stock.move", m["id"].as_i64().unwrap_or(0)).expect("the move exists");
            rec.remove("quantity");
            rec.remove("picked");
        }
        db
    }

    fn insert_with_id(&mut self, model: &str, id: i64, values: Value) {
        self.touch(model, id);
        let mut rec = values.as_object().cloned().unwrap_or_default();
        rec.insert("id".into(), json!(id));
        self.records.entry(model.to_owned()).or_default().insert(id, rec);
    }

    pub fn create(&mut self, model: &str, values: Value) -> i64 {
        self.next_id += 1;
        let id = self.next_id;
        self.insert_with_id(model, id, values);
        id
    }

    /// Record ids of `model` matching `domain` (a list of `[field, operator, value]` leaves, AND-ed).
    pub fn search(&self, model: &str, domain: &Value) -> Result<Vec<i64>, Fault> {
        let leaves = domain.as_array().ok_or_else(|| Fault::value(format!("Invalid domain {domain}")))?;
        let mut ids = Vec::new();
        for (id, rec) in self.records.get(model).into_iter().flatten() {
            let mut all = true;
            for leaf in leaves {
                if leaf.as_str() == Some("&") {
                    continue;
                }
                if !self.matches(model, rec, leaf)? {
                    all = false;
                    break;
                }
            }
            if all {
                ids.push(*id);
            }
        }
        Ok(ids)
    }

    /// Runs a model method as `execute_kw` would; `Ok(Value::Null)` for a method returning None.
    pub fn call(
        &mut self,
        model: &str,
        method: &str,
        args: &[Value],
        kwargs: &Map<String, Value>,
    ) -> Result<Value, Fault> {
        if method.starts_with('_') {
            return Err(Fault::access(format!(
                "Private methods (such as {model}.{method}) cannot be called remotely."
            )));
        }
        if !MODELS.contains(&model) {
            return Err(Fault::not_found(format!("Object {model} doesn't exist")));
        }
        match (model, method) {
            // External ids, as `ir.model.data` rows (module, name, model, res_id).
            ("ir.model.data", "search_read") => {
                let leaves = args.first().and_then(Value::as_array).cloned().unwrap_or_default();
                let wanted = |field: &str| {
                    leaves
                        .iter()
                        .find(|l| l.get(0).and_then(Value::as_str) == Some(field))
                        .and_then(|l| l.get(2))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                let (module, name) = (wanted("module"), wanted("name"));
                let rows: Vec<Value> = self
                    .xmlids
                    .iter()
                    .filter(|(xmlid, _)| {
                        let (m, n) = xmlid.split_once('.').unwrap_or(("", ""));
                        module.as_deref().is_none_or(|w| w == m) && name.as_deref().is_none_or(|w| w == n)
                    })
                    .map(|(xmlid, (res_model, res_id))| {
                        let (m, n) = xmlid.split_once('.').unwrap_or(("", ""));
                        json!({"module": m, "name": n, "model": res_model, "res_id": res_id})
                    })
                    .collect();
                Ok(Value::Array(rows))
            }
            ("res.users", "context_get") => Ok(json!({"lang": "en_US", "tz": "Europe/Brussels", "uid": 2})),
            (_, "search") => Ok(json!(self.search(model, args.first().unwrap_or(&json!([])))?)),
            (_, "search_count") => Ok(json!(self.search(model, args.first().unwrap_or(&json!([])))?.len())),
            (_, "read") => self.read(model, args, kwargs),
            (_, "search_read") => {
                let ids = self.search(model, args.first().unwrap_or(&json!([])))?;
                self.read(model, &[json!(ids)], kwargs)
            }
            ("stock.quant", "create") => self.quant_create(args, kwargs),
            (_, "create") => {
                let values = args.first().ok_or_else(|| Fault::value("create() needs values"))?;
                match values {
                    Value::Array(many) => {
                        Ok(json!(many.iter().map(|v| self.create(model, v.clone())).collect::<Vec<_>>()))
                    }
                    one => Ok(json!(self.create(model, one.clone()))),
                }
            }
            (_, "write") => self.write(model, args),
            // Odoo's set_qty_producing updates the moves from qty_producing and returns None.
            ("mrp.production", "set_qty_producing") => {
                for id in ids_of(args.first())? {
                    self.get_mut(model, id)?;
                }
                Ok(Value::Null)
            }
            ("mrp.production", "button_mark_done") => self.mark_done(args, &context(kwargs)),
            ("stock.picking", "button_validate") => self.validate_pickings(args, &context(kwargs)),
            ("stock.quant", "action_apply_inventory") => self.apply_inventory(args),
            (_, "load") => self.load(model, args, kwargs),
            _ => Err(Fault::attribute(format!("The method '{method}' does not exist on the model '{model}'"))),
        }
    }

    /// `stock.quant.create` in inventory mode finds the quant of a product at a location, or
    /// makes it, and sets its counted quantity; outside inventory mode it is refused.
    fn quant_create(&mut self, args: &[Value], kwargs: &Map<String, Value>) -> Result<Value, Fault> {
        let inventory_mode =
            kwargs.get("context").and_then(|c| c.get("inventory_mode")).and_then(Value::as_bool) == Some(true);
        if !inventory_mode {
            return Err(Fault::access(
                "Quants cannot be created directly: use inventory mode (context inventory_mode=True).",
            ));
        }
        let vals = args.first().and_then(Value::as_object).ok_or_else(|| Fault::value("create() needs values"))?;
        let (product, location) =
            (vals.get("product_id").and_then(Value::as_i64), vals.get("location_id").and_then(Value::as_i64));
        let (Some(product), Some(location)) = (product, location) else {
            return Err(Fault::validation("A quant needs a product_id and a location_id."));
        };
        let qty = vals.get("inventory_quantity").cloned().unwrap_or(json!(0.0));
        let existing =
            self.search("stock.quant", &json!([["product_id", "=", product], ["location_id", "=", location]]))?;
        let id = match existing.first() {
            Some(id) => *id,
            None => {
                self.create("stock.quant", json!({"product_id": product, "location_id": location, "quantity": 0.0}))
            }
        };
        let rec = self.get_mut("stock.quant", id)?;
        let on_hand = rec.get("quantity").cloned().unwrap_or(json!(0.0));
        rec.insert("inventory_quantity".into(), qty);
        rec.insert("inventory_quantity_set".into(), json!(true));
        // What was on hand when the count was taken: stock moving after it is a conflict.
        rec.insert("quantity_at_count".into(), on_hand);
        Ok(json!(id))
    }

    /// `mrp.production.button_mark_done`: an order producing less than planned asks whether to
    /// make a backorder (the `mrp.production.backorder` wizard) unless the context says
    /// `skip_backorder`; nothing producing is refused.
    fn mark_done(&mut self, args: &[Value], ctx: &Map<String, Value>) -> Result<Value, Fault> {
        let ids = ids_of(args.first())?;
        let mut short = Vec::new();
        for id in &ids {
            let rec = self.get_mut("mrp.production", *id)?;
            let name = rec.get("name").and_then(Value::as_str).unwrap_or("?").to_owned();
            if matches!(rec.get("state").and_then(Value::as_str), Some("done" | "cancel")) {
                return Err(Fault::user(format!(
                    "The manufacturing order {name} is done or cancelled: it cannot be changed."
                )));
            }
            let producing = rec.get("qty_producing").and_then(Value::as_f64).unwrap_or(0.0);
            let planned = rec.get("product_qty").and_then(Value::as_f64).unwrap_or(0.0);
            if producing <= 0.0 {
                return Err(Fault::user(format!("The quantity to produce must be positive! ({name})")));
            }
            if producing < planned {
                short.push(*id);
            }
        }
        if !short.is_empty() && !flag(ctx, "skip_backorder") {
            return Ok(wizard(
                "Create Backorder?",
                "mrp.production.backorder",
                ctx,
                json!({"default_mrp_production_ids": [[6, 0, short]]}),
            ));
        }
        for id in ids {
            self.get_mut("mrp.production", id)?.insert("state".into(), json!("done"));
        }
        Ok(json!(true))
    }

    /// `stock.picking.button_validate`: moves of a picking are done with the quantities set on
    /// them (stock arrives in the quants of the destination); a picking with nothing set is
    /// refused; one with less than planned asks for a backorder (`stock.backorder.confirmation`)
    /// unless the context says `skip_backorder`, and then makes one unless the picking is in
    /// `picking_ids_not_to_backorder`.
    fn validate_pickings(&mut self, args: &[Value], ctx: &Map<String, Value>) -> Result<Value, Fault> {
        let ids = ids_of(args.first())?;
        let mut short = Vec::new();
        for id in &ids {
            let rec = self.get_mut("stock.picking", *id)?;
            let name = rec.get("name").and_then(Value::as_str).unwrap_or("?").to_owned();
            if matches!(rec.get("state").and_then(Value::as_str), Some("done" | "cancel")) {
                return Err(Fault::user(format!(
                    "The transfer {name} is done or cancelled: it cannot be validated again."
                )));
            }
            let moves = self.moves_of(*id);
            if moves.iter().all(|m| self.done(m) <= 0.0) {
                if self.v16 && flag(ctx, "skip_immediate") {
                    // 16.0's immediate transfer: everything reserved is done.
                    for line in self.lines_of(*id) {
                        let reserved = qty(&line, "reserved_uom_qty");
                        self.get_mut("stock.move.line", line["id"].as_i64().unwrap_or(0))?
                            .insert("qty_done".into(), json!(reserved));
                    }
                } else if self.v16 {
                    return Ok(wizard(
                        "Immediate Transfer?",
                        "stock.immediate.transfer",
                        ctx,
                        json!({"default_pick_ids": [[4, id]], "default_show_transfers": false}),
                    ));
                } else {
                    return Err(Fault::user(format!(
                        "You cannot validate a transfer if no quantities are reserved nor done. To force the transfer, encode quantities. ({name})"
                    )));
                }
            }
            let moves = self.moves_of(*id);
            if moves.iter().any(|m| self.done(m) < qty(m, "product_uom_qty")) {
                short.push(*id);
            }
        }
        if !short.is_empty() && !flag(ctx, "skip_backorder") {
            let pick_ids: Vec<Value> = short.iter().map(|id| json!([4, id])).collect();
            return Ok(wizard(
                "Create Backorder?",
                "stock.backorder.confirmation",
                ctx,
                json!({"default_pick_ids": pick_ids, "default_show_transfers": false}),
            ));
        }
        let no_backorder: Vec<i64> = ctx
            .get("picking_ids_not_to_backorder")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        for id in ids {
            let picking = self.records["stock.picking"][&id].clone();
            let dest = picking.get("location_dest_id").and_then(Value::as_i64).unwrap_or(0);
            let mut remaining = Vec::new();
            for m in self.moves_of(id) {
                let (done, planned) = (self.done(&m), qty(&m, "product_uom_qty"));
                let product = m.get("product_id").and_then(Value::as_i64).unwrap_or(0);
                let move_id = m["id"].as_i64().unwrap_or(0);
                let rec = self.get_mut("stock.move", move_id)?;
                rec.insert("state".into(), json!(if done > 0.0 { "done" } else { "cancel" }));
                if done > 0.0 {
                    self.add_stock(product, dest, done);
                }
                if done < planned {
                    remaining.push((product, planned - done));
                }
            }
            self.get_mut("stock.picking", id)?.insert("state".into(), json!("done"));
            if !remaining.is_empty() && !no_backorder.contains(&id) {
                let name = picking.get("name").and_then(Value::as_str).unwrap_or("?");
                let backorder = self.create(
                    "stock.picking",
                    json!({"name": format!("{name}-BO"), "state": "assigned", "backorder_id": id,
                           "picking_type_id": picking.get("picking_type_id"), "location_dest_id": dest}),
                );
                for (product, planned) in remaining {
                    self.create("stock.move", json!({"picking_id": backorder, "product_id": product, "product_uom_qty": planned, "quantity": 0.0, "picked": false, "state": "assigned"}));
                }
            }
        }
        Ok(json!(true))
    }

    /// What was done of a move: its `quantity` (17.0+), or its move lines' `qty_done` (16.0).
    fn done(&self, m: &Record) -> f64 {
        if !self.v16 {
            return qty(m, "quantity");
        }
        let id = m.get("id").and_then(Value::as_i64);
        let lines = self.records.get("stock.move.line").into_iter().flat_map(|l| l.values());
        lines.filter(|l| l.get("move_id").and_then(Value::as_i64) == id).map(|l| qty(l, "qty_done")).sum()
    }

    fn lines_of(&self, picking: i64) -> Vec<Record> {
        let lines = self.records.get("stock.move.line").into_iter().flat_map(|l| l.values());
        lines.filter(|l| l.get("picking_id").and_then(Value::as_i64) == Some(picking)).cloned().collect()
    }

    fn moves_of(&self, picking: i64) -> Vec<Record> {
        self.records
            .get("stock.move")
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|m| m.get("picking_id").and_then(Value::as_i64) == Some(picking))
            .cloned()
            .collect()
    }

    /// Stock arriving at a location: the quant of the product there grows.
    fn add_stock(&mut self, product: i64, location: i64, quantity: f64) {
        let found = self
            .search("stock.quant", &json!([["product_id", "=", product], ["location_id", "=", location]]))
            .unwrap_or_default();
        let id = match found.first() {
            Some(id) => *id,
            None => {
                self.create("stock.quant", json!({"product_id": product, "location_id": location, "quantity": 0.0}))
            }
        };
        let rec = self.get_mut("stock.quant", id).expect("the quant exists");
        let now = qty(rec, "quantity") + quantity;
        rec.insert("quantity".into(), json!(now));
    }

    /// `stock.quant.action_apply_inventory`: sets each counted quant to its count and returns
    /// None; when stock moved since a count was taken it returns the `stock.inventory.conflict`
    /// wizard instead and changes nothing.
    fn apply_inventory(&mut self, args: &[Value]) -> Result<Value, Fault> {
        let ids = ids_of(args.first())?;
        let mut outdated = Vec::new();
        for id in &ids {
            let rec = self.get_mut("stock.quant", *id)?;
            let counted_at = rec.get("quantity_at_count").and_then(Value::as_f64);
            if rec.get("inventory_quantity_set") == Some(&json!(true))
                && counted_at.is_some_and(|q| q != qty(rec, "quantity"))
            {
                outdated.push(*id);
            }
        }
        if !outdated.is_empty() {
            return Ok(
                json!({"name": "Conflict in Inventory Adjustment", "type": "ir.actions.act_window", "view_mode": "form",
                             "views": [[false, "form"]], "res_model": "stock.inventory.conflict", "target": "new",
                             "context": {"default_quant_ids": ids, "default_quant_to_fix_ids": outdated}}),
            );
        }
        for id in ids {
            let rec = self.get_mut("stock.quant", id)?;
            if rec.get("inventory_quantity_set") == Some(&json!(true)) {
                let counted = qty(rec, "inventory_quantity");
                rec.insert("quantity".into(), json!(counted));
                rec.insert("inventory_quantity_set".into(), json!(false));
                rec.remove("quantity_at_count");
            }
        }
        Ok(Value::Null)
    }

    /// `Model.load(fields, rows)`: an `id` column is an external id, upserted (a name without a
    /// module is `__import__.name`); a `field/id` column names a record by external id. Errors
    /// are answered as messages, never raised, and then nothing of the call stays.
    fn load(&mut self, model: &str, args: &[Value], kwargs: &Map<String, Value>) -> Result<Value, Fault> {
        let fields =
            args.first().or_else(|| kwargs.get("fields")).and_then(Value::as_array).cloned().unwrap_or_default();
        let rows = args.get(1).or_else(|| kwargs.get("data")).and_then(Value::as_array).cloned().unwrap_or_default();
        let fields: Vec<String> = fields.iter().map(|f| f.as_str().unwrap_or("").to_owned()).collect();
        let loaded = self.savepoint(|db| db.load_rows(model, &fields, &rows));
        Ok(match loaded {
            Ok(ids) => json!({"ids": ids, "messages": [], "nextrow": 0}),
            Err(messages) => json!({"ids": false, "messages": messages, "nextrow": 0}),
        })
    }

    /// The rows of a `load`: the ids, or the error messages (and the caller's savepoint undoes
    /// what the good rows did).
    fn load_rows(&mut self, model: &str, fields: &[String], rows: &[Value]) -> Result<Vec<i64>, Vec<Value>> {
        let scratch = self;
        let mut ids = Vec::new();
        let mut messages = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let cells = row.as_array().cloned().unwrap_or_default();
            let mut values = Map::new();
            let mut xmlid = None;
            let mut error = None;
            for (field, cell) in fields.iter().zip(cells) {
                if field == "id" {
                    let name = cell.as_str().unwrap_or("");
                    xmlid = Some(if name.contains('.') { name.to_owned() } else { format!("__import__.{name}") });
                } else if let Some(target) = field.strip_suffix("/id") {
                    let name = cell.as_str().unwrap_or("");
                    match scratch.xmlids.get(name) {
                        Some((_, id)) => {
                            values.insert(target.to_owned(), json!(id));
                        }
                        None => {
                            error =
                                Some(format!("No matching record found for external id '{name}' in field '{target}'"));
                        }
                    }
                } else {
                    values.insert(field.clone(), cell);
                }
            }
            let outcome = match (error, &xmlid) {
                (Some(e), _) => Err(e),
                (None, Some(x)) if scratch.xmlids.contains_key(x) => {
                    let id = scratch.xmlids[x].1;
                    scratch.write(model, &[json!([id]), Value::Object(values)]).map(|_| id).map_err(|f| f.message)
                }
                (None, _) => {
                    let id = scratch.create(model, Value::Object(values));
                    if let Some(x) = xmlid {
                        scratch.set_xmlid(x, (model.to_owned(), id));
                    }
                    Ok(id)
                }
            };
            match outcome {
                Ok(id) => ids.push(id),
                Err(message) => messages
                    .push(json!({"type": "error", "message": message, "record": i, "rows": {"from": i, "to": i}})),
            }
        }
        if messages.is_empty() { Ok(ids) } else { Err(messages) }
    }

    fn get_mut(&mut self, model: &str, id: i64) -> Result<&mut Record, Fault> {
        if self.records.get(model).is_some_and(|m| m.contains_key(&id)) {
            self.touch(model, id);
        }
        self.records.get_mut(model).and_then(|m| m.get_mut(&id)).ok_or_else(|| {
            Fault::missing(format!("Record does not exist or has been deleted.\n(Record: {model}({id},), User: 2)"))
        })
    }

    fn read(&self, model: &str, args: &[Value], kwargs: &Map<String, Value>) -> Result<Value, Fault> {
        let fields: Option<Vec<String>> = args
            .get(1)
            .or_else(|| kwargs.get("fields"))
            .and_then(|f| f.as_array())
            .map(|f| f.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect());
        let mut out = Vec::new();
        for id in ids_of(args.first())? {
            let rec = self.records.get(model).and_then(|m| m.get(&id)).ok_or_else(|| {
                Fault::missing(format!("Record does not exist or has been deleted.\n(Record: {model}({id},), User: 2)"))
            })?;
            let mut shown = Record::new();
            shown.insert("id".into(), json!(id));
            for (k, v) in rec {
                if fields.as_ref().is_none_or(|f| f.contains(k)) {
                    shown.insert(k.clone(), v.clone());
                }
            }
            out.push(Value::Object(shown));
        }
        Ok(Value::Array(out))
    }

    fn write(&mut self, model: &str, args: &[Value]) -> Result<Value, Fault> {
        let ids = ids_of(args.first())?;
        let values = args
            .get(1)
            .and_then(Value::as_object)
            .ok_or_else(|| Fault::value("write() needs a dictionary of values"))?
            .clone();
        // Fields one version has and the other does not.
        let unknown = match model {
            "stock.move" if self.v16 => ["quantity", "picked"].into_iter().find(|f| values.contains_key(*f)),
            "stock.move.line" if !self.v16 => values.contains_key("qty_done").then_some("qty_done"),
            _ => None,
        };
        if let Some(field) = unknown {
            return Err(Fault::value(format!("Invalid field '{field}' on model '{model}'")));
        }
        // Check everything first, so a refusal changes nothing (Odoo rolls the call back).
        for id in &ids {
            let rec = self.records.get(model).and_then(|m| m.get(id)).ok_or_else(|| {
                Fault::missing(format!("Record does not exist or has been deleted.\n(Record: {model}({id},), User: 2)"))
            })?;
            if model == "stock.move" && matches!(rec.get("state").and_then(Value::as_str), Some("done" | "cancel")) {
                return Err(Fault::user("You cannot change a stock move that has been set to 'Done' or 'Cancel'."));
            }
            if model == "mrp.production" {
                if matches!(rec.get("state").and_then(Value::as_str), Some("done" | "cancel")) {
                    return Err(Fault::user(format!(
                        "The manufacturing order {} is done or cancelled: it cannot be changed.",
                        rec["name"].as_str().unwrap_or("?")
                    )));
                }
                if let Some(q) = values.get("qty_producing")
                    && q.as_f64().is_none_or(|q| q < 0.0)
                {
                    return Err(Fault::validation(format!(
                        "The quantity producing must be a positive number, not {q}."
                    )));
                }
            }
        }
        for id in ids {
            let rec = self.get_mut(model, id)?;
            for (k, v) in &values {
                rec.insert(k.clone(), v.clone());
            }
        }
        Ok(json!(true))
    }
}

/// The `context` keyword argument of a call.
fn context(kwargs: &Map<String, Value>) -> Map<String, Value> {
    kwargs.get("context").and_then(Value::as_object).cloned().unwrap_or_default()
}

fn flag(ctx: &Map<String, Value>, name: &str) -> bool {
    ctx.get(name).is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false)))
}

fn qty(rec: &Record, field: &str) -> f64 {
    rec.get(field).and_then(Value::as_f64).unwrap_or(0.0)
}

/// The action dictionary by which Odoo opens a wizard instead of finishing.
fn wizard(name: &str, res_model: &str, ctx: &Map<String, Value>, defaults: Value) -> Value {
    let mut context = ctx.clone();
    context.extend(defaults.as_object().cloned().unwrap_or_default());
    json!({"name": name, "type": "ir.actions.act_window", "view_mode": "form", "res_model": res_model,
           "views": [[false, "form"]], "target": "new", "context": context})
}

fn ids_of(v: Option<&Value>) -> Result<Vec<i64>, Fault> {
    match v {
        Some(Value::Number(n)) => n.as_i64().map(|i| vec![i]).ok_or_else(|| Fault::value(format!("Invalid id {n}"))),
        Some(Value::Array(a)) => {
            a.iter().map(|x| x.as_i64().ok_or_else(|| Fault::value(format!("Invalid id {x}")))).collect()
        }
        other => Err(Fault::value(format!(
            "Expected record ids, got {}",
            other.map_or("nothing".to_owned(), Value::to_string)
        ))),
    }
}

impl Db {
    /// Whether a record satisfies one `[path, operator, value]` leaf; `path` may follow many2one
    /// fields (`product_id.barcode`).
    fn matches(&self, model: &str, rec: &Record, leaf: &Value) -> Result<bool, Fault> {
        let parts =
            leaf.as_array().filter(|p| p.len() == 3).ok_or_else(|| Fault::value(format!("Invalid leaf {leaf}")))?;
        let path = parts[0].as_str().ok_or_else(|| Fault::value(format!("Invalid leaf {leaf}")))?;
        let op = parts[1].as_str().unwrap_or("");
        let want = &parts[2];
        let mut have = Value::Bool(false);
        let (mut cur_model, mut cur) = (model.to_owned(), Some(rec));
        let fields: Vec<&str> = path.split('.').collect();
        for (i, field) in fields.iter().enumerate() {
            let Some(r) = cur else { break };
            let v = r.get(*field).cloned().unwrap_or(Value::Bool(false));
            if i + 1 == fields.len() {
                have = v;
            } else {
                let target = relation(&cur_model, field)
                    .ok_or_else(|| Fault::value(format!("Invalid field {cur_model}.{field} in leaf {leaf}")))?;
                cur = v.as_i64().and_then(|id| self.records.get(target).and_then(|m| m.get(&id)));
                cur_model = target.to_owned();
            }
        }
        compare(&have, op, want).ok_or_else(|| Fault::value(format!("Invalid leaf {leaf}: unknown operator {op:?}")))
    }
}

fn compare(have: &Value, op: &str, want: &Value) -> Option<bool> {
    Some(match op {
        "=" => have == want || (have.as_f64().is_some() && have.as_f64() == want.as_f64()),
        "!=" => have != want,
        "in" => want.as_array().is_some_and(|a| a.contains(have)),
        "not in" => !want.as_array().is_some_and(|a| a.contains(have)),
        "ilike" => match (have.as_str(), want.as_str()) {
            (Some(h), Some(w)) => h.to_lowercase().contains(&w.to_lowercase()),
            _ => false,
        },
        "<" | ">" | "<=" | ">=" => match (have.as_f64(), want.as_f64()) {
            (Some(h), Some(w)) => match op {
                "<" => h < w,
                ">" => h > w,
                "<=" => h <= w,
                _ => h >= w,
            },
            _ => false,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_finds_by_name_and_refusals_change_nothing() {
        let mut db = Db::seeded(3);
        let ids = db.search("mrp.production", &json!([["name", "=", "WH/MO/00002"]])).unwrap();
        assert_eq!(ids.len(), 1);
        db.call("mrp.production", "write", &[json!(ids.clone()), json!({"qty_producing": 5.0})], &Map::new()).unwrap();
        let skip = Map::from_iter([("context".to_owned(), json!({"skip_backorder": true}))]);
        db.call("mrp.production", "button_mark_done", &[json!(ids.clone())], &skip).unwrap();
        let err = db
            .call("mrp.production", "write", &[json!(ids.clone()), json!({"qty_producing": 6.0})], &Map::new())
            .unwrap_err();
        assert_eq!(err.name, "odoo.exceptions.UserError");
        let read = db.call("mrp.production", "read", &[json!(ids), json!(["qty_producing"])], &Map::new()).unwrap();
        assert_eq!(read[0]["qty_producing"], json!(5.0));
        assert_eq!(db.call("res.users", "_sudo", &[], &Map::new()).unwrap_err().name, "odoo.exceptions.AccessError");
        assert_eq!(db.call("no.such", "read", &[], &Map::new()).unwrap_err().name, "werkzeug.exceptions.NotFound");
    }

    fn call(db: &mut Db, model: &str, method: &str, args: Value, ctx: Value) -> Result<Value, Fault> {
        let kwargs = Map::from_iter([("context".to_owned(), ctx)]);
        db.call(model, method, args.as_array().unwrap(), &kwargs)
    }

    #[test]
    fn short_deliveries_and_productions_open_backorder_wizards_unless_the_context_skips_them() {
        let mut db = Db::seeded(1);
        let picking = db.search("stock.picking", &json!([["name", "=", "WH/IN/00001"]])).unwrap()[0];
        let moves = db.search("stock.move", &json!([["picking_id", "=", picking]])).unwrap();
        let err = call(&mut db, "stock.picking", "button_validate", json!([[picking]]), json!({})).unwrap_err();
        assert!(err.message.starts_with("You cannot validate a transfer if no quantities are reserved nor done"));
        call(&mut db, "stock.move", "write", json!([[moves[0]], {"quantity": 5.0, "picked": true}]), json!({}))
            .unwrap();
        let action = call(&mut db, "stock.picking", "button_validate", json!([[picking]]), json!({})).unwrap();
        assert_eq!(action["type"], "ir.actions.act_window");
        assert_eq!(action["res_model"], "stock.backorder.confirmation");
        assert_eq!(action["context"]["default_pick_ids"], json!([[4, picking]]));
        assert_eq!(db.records["stock.picking"][&picking]["state"], "assigned", "a wizard changes nothing");
        let ctx = json!({"skip_backorder": true, "picking_ids_not_to_backorder": [picking]});
        assert_eq!(call(&mut db, "stock.picking", "button_validate", json!([[picking]]), ctx).unwrap(), json!(true));
        assert_eq!(db.records["stock.picking"][&picking]["state"], "done");
        assert_eq!(db.search("stock.picking", &json!([["backorder_id", "=", picking]])).unwrap().len(), 0);

        let mo = db.search("mrp.production", &json!([])).unwrap()[0];
        call(&mut db, "mrp.production", "write", json!([[mo], {"qty_producing": 40.0}]), json!({})).unwrap();
        let action = call(&mut db, "mrp.production", "button_mark_done", json!([[mo]]), json!({})).unwrap();
        assert_eq!(action["res_model"], "mrp.production.backorder");
        let ctx = json!({"skip_backorder": true, "skip_consumption": true});
        assert_eq!(call(&mut db, "mrp.production", "button_mark_done", json!([[mo]]), ctx).unwrap(), json!(true));
    }

    #[test]
    fn a_count_taken_before_stock_moved_is_a_conflict_wizard_and_one_after_applies() {
        let mut db = Db::seeded(1);
        let product = db.search("product.product", &json!([["barcode", "=", "5901234123457"]])).unwrap()[0];
        let stock = db.xmlids["stock.stock_location_stock"].1;
        let inventory = json!({"inventory_mode": true});
        let count = json!([{"product_id": product, "location_id": stock, "inventory_quantity": 12.0}]);
        let quant = call(&mut db, "stock.quant", "create", count.clone(), inventory.clone()).unwrap();
        // A receipt of 5 of the product lands after the count.
        let picking = db.search("stock.picking", &json!([["name", "=", "WH/IN/00001"]])).unwrap()[0];
        let moves =
            db.search("stock.move", &json!([["picking_id", "=", picking], ["product_id", "=", product]])).unwrap();
        call(&mut db, "stock.move", "write", json!([moves, {"quantity": 5.0}]), json!({})).unwrap();
        call(&mut db, "stock.picking", "button_validate", json!([[picking]]), json!({"skip_backorder": true})).unwrap();
        assert_eq!(db.records["stock.quant"][&quant.as_i64().unwrap()]["quantity"], json!(5.0));
        let action = call(&mut db, "stock.quant", "action_apply_inventory", json!([[quant]]), json!({})).unwrap();
        assert_eq!(action["res_model"], "stock.inventory.conflict");
        assert_eq!(action["context"]["default_quant_to_fix_ids"], json!([quant]));
        // A count taken now applies, and returns None.
        call(&mut db, "stock.quant", "create", count, inventory).unwrap();
        assert_eq!(
            call(&mut db, "stock.quant", "action_apply_inventory", json!([[quant]]), json!({})).unwrap(),
            Value::Null
        );
        assert_eq!(db.records["stock.quant"][&quant.as_i64().unwrap()]["quantity"], json!(12.0));
    }

    #[test]
    fn load_upserts_by_external_id_and_answers_errors_as_messages() {
        let mut db = Db::seeded(0);
        let fields = json!(["id", "name", "product_id/id", "product_qty"]);
        let rows = json!([["mes.mo_1", "WH/MO/01000", "holdfast_demo.product_1", 10.0]]);
        let first = call(&mut db, "mrp.production", "load", json!([fields, rows]), json!({})).unwrap();
        let id = first["ids"][0].as_i64().unwrap();
        assert_eq!(first["messages"], json!([]));
        let again = json!([["mes.mo_1", "WH/MO/01000", "holdfast_demo.product_1", 20.0]]);
        let second = call(&mut db, "mrp.production", "load", json!([fields, again]), json!({})).unwrap();
        assert_eq!(second["ids"], json!([id]), "the same external id is the same record");
        assert_eq!(db.records["mrp.production"][&id]["product_qty"], json!(20.0));
        let bad = json!([
            ["mes.mo_2", "WH/MO/01001", "holdfast_demo.product_1", 1.0],
            ["mes.mo_3", "WH/MO/01002", "no.such", 1.0]
        ]);
        let refused = call(&mut db, "mrp.production", "load", json!([fields, bad]), json!({})).unwrap();
        assert_eq!(refused["ids"], json!(false));
        assert_eq!(
            refused["messages"],
            json!([{"type": "error", "message": "No matching record found for external id 'no.such' in field 'product_id'", "record": 1, "rows": {"from": 1, "to": 1}}])
        );
        assert!(!db.xmlids.contains_key("mes.mo_2"), "a load with an error keeps nothing");
    }

    #[test]
    fn savepoints_undo_exactly_what_a_failed_call_changed_nested_ones_included() {
        let mut db = Db::seeded(2);
        let before = (db.records.clone(), db.xmlids.clone());
        let mo = db.search("mrp.production", &json!([["name", "=", "WH/MO/00001"]])).unwrap()[0];
        let failed: Result<(), Fault> = db.savepoint(|db| {
            db.write("mrp.production", &[json!([mo]), json!({"qty_producing": 4.0})])?;
            let inner: Result<i64, Fault> = db.savepoint(|db| {
                let id = db.create("mrp.production", json!({"name": "WH/MO/00999"}));
                db.set_xmlid("mes.mo_999".into(), ("mrp.production".into(), id));
                Ok(id)
            });
            inner?;
            let refused: Result<(), Fault> = db.savepoint(|db| {
                db.write("mrp.production", &[json!([mo]), json!({"qty_producing": 7.0})])?;
                Err(Fault::user("refused after a write"))
            });
            assert!(refused.is_err());
            assert_eq!(db.records["mrp.production"][&mo]["qty_producing"], json!(4.0), "the inner rollback only");
            Err(Fault::user("the whole call fails"))
        });
        assert!(failed.is_err());
        assert_eq!((db.records.clone(), db.xmlids.clone()), before, "nothing of the call stays");
        let id = db.create("mrp.production", json!({"name": "WH/MO/01000"}));
        assert_eq!(db.records["mrp.production"].range(..id).count(), 2, "ids are given again from where they were");
    }

    #[test]
    fn odoo_16_records_done_quantities_on_move_lines_and_asks_for_an_immediate_transfer() {
        let mut db = Db::seeded_16(0);
        let picking = db.search("stock.picking", &json!([["name", "=", "WH/IN/00001"]])).unwrap()[0];
        let moves = db.search("stock.move", &json!([["picking_id", "=", picking]])).unwrap();
        let err = call(&mut db, "stock.move", "write", json!([[moves[0]], {"quantity": 5.0}]), json!({})).unwrap_err();
        assert_eq!(
            (err.name, err.message.as_str()),
            ("builtins.ValueError", "Invalid field 'quantity' on model 'stock.move'")
        );
        let action = call(&mut db, "stock.picking", "button_validate", json!([[picking]]), json!({})).unwrap();
        assert_eq!(action["res_model"], "stock.immediate.transfer");
        let line = db.search("stock.move.line", &json!([["move_id", "=", moves[0]]])).unwrap();
        call(&mut db, "stock.move.line", "write", json!([line, {"qty_done": 5.0}]), json!({})).unwrap();
        let action = call(&mut db, "stock.picking", "button_validate", json!([[picking]]), json!({})).unwrap();
        assert_eq!(action["res_model"], "stock.backorder.confirmation", "5 of 100 done on one move");
        let ctx = json!({"skip_backorder": true, "picking_ids_not_to_backorder": [picking]});
        assert_eq!(call(&mut db, "stock.picking", "button_validate", json!([[picking]]), ctx).unwrap(), json!(true));
        let stock = db.xmlids["stock.stock_location_stock"].1;
        let product = db.records["stock.move"][&moves[0]]["product_id"].as_i64().unwrap();
        let quant =
            db.search("stock.quant", &json!([["product_id", "=", product], ["location_id", "=", stock]])).unwrap();
        assert_eq!(db.records["stock.quant"][&quant[0]]["quantity"], json!(5.0));

        // With skip_immediate, what was reserved is done.
        let mut db = Db::seeded_16(0);
        let ctx = json!({"skip_immediate": true, "skip_backorder": true});
        assert_eq!(call(&mut db, "stock.picking", "button_validate", json!([[picking]]), ctx).unwrap(), json!(true));
        assert_eq!(db.records["stock.picking"][&picking]["state"], "done");
        let v17 = call(&mut Db::seeded(0), "stock.move.line", "write", json!([[1], {"qty_done": 1.0}]), json!({}));
        assert_eq!(v17.unwrap_err().message, "Invalid field 'qty_done' on model 'stock.move.line'");
    }
}
