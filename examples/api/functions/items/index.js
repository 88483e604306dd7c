// A small JSON CRUD API for "items".
//
//   GET    /items        list items
//   POST   /items        create an item from a JSON body       -> 201 {"id": ..., ...}
//   GET    /items/{id}   read one item                          -> 404 if missing
//   PUT    /items/{id}   replace an item's fields with the body -> 404 if missing
//   DELETE /items/{id}   delete an item                         -> 404 if missing
//
// Like the usual "open the DB connection outside the handler" pattern, the store is
// created once, when the module loads, and reused by every invocation that this warm
// instance serves. It lives per warm instance: it is lost when the instance is reclaimed,
// and two instances would not share it (nimbus.toml sets max_instances = 1).
const store = new Map();
let nextId = 1;

const json = (statusCode, value) => ({
  statusCode,
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(value),
});

function parseBody(event) {
  if (!event.body) return { error: 'a JSON object body is required' };
  const raw = event.isBase64Encoded ? Buffer.from(event.body, 'base64').toString('utf8') : event.body;
  let value;
  try {
    value = JSON.parse(raw);
  } catch (e) {
    return { error: `invalid JSON: ${e.message}` };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { error: 'the body must be a JSON object' };
  }
  delete value.id; // the id comes from the path / the store
  return { value };
}

exports.handler = async (event, context) => {
  const method = event.requestContext.http.method;
  const id = (event.pathParameters || {}).id;

  if (id === undefined || id === null) {
    if (method === 'GET') return json(200, { items: [...store.values()] });
    if (method === 'POST') {
      const { value, error } = parseBody(event);
      if (error) return json(400, { error });
      const item = { id: String(nextId++), ...value };
      store.set(item.id, item);
      return json(201, item);
    }
    return json(405, { error: `method ${method} not allowed on /items` });
  }

  const item = store.get(id);
  if (!item) return json(404, { error: `item ${id} not found` });
  switch (method) {
    case 'GET':
      return json(200, item);
    case 'PUT': {
      const { value, error } = parseBody(event);
      if (error) return json(400, { error });
      const updated = { id, ...value };
      store.set(id, updated);
      return json(200, updated);
    }
    case 'DELETE':
      store.delete(id);
      return json(200, { deleted: id });
    default:
      return json(405, { error: `method ${method} not allowed on /items/{id}` });
  }
};
