// Test app: a plain Node.js HTTP server.
const http = require("http");
http
  .createServer((req, res) => {
    if (req.url === "/health") return res.end("ok");
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ pid: process.pid, instance: process.env.NUBO_INSTANCE, path: req.url }));
  })
  .listen(Number(process.env.PORT), "127.0.0.1");
