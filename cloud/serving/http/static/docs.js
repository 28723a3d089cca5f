// Starts Swagger UI on this server's /openapi.json. A file of its own, not an inline script,
// so the page runs under the same Content-Security-Policy as every other (script-src 'self').
"use strict";

window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null, // never ask validator.swagger.io: the page loads nothing from elsewhere
  presets: [SwaggerUIBundle.presets.apis],
  onComplete: () => { document.body.dataset.loaded = "1"; },
});
