// GET /hello/{name} -> {"message": "Hello, <name>!", "runtime": "node"}
// The event is an API Gateway HTTP API (v2) event; `name` comes from the route's path parameter.
exports.handler = async (event, context) => {
  const name = (event.pathParameters && event.pathParameters.name) || 'world';
  const greeting = process.env.GREETING || 'Hello';
  return {
    statusCode: 200,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ message: `${greeting}, ${name}!`, runtime: 'node' }),
  };
};
