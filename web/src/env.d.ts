/** The job request's hyperparameters as the API's schema (openapi.json) states them; put in by vite.config.ts at build time. */
declare const __API_HYPERPARAMETERS__: Record<string, import("./hyperparameterSchema").SchemaHp>;
