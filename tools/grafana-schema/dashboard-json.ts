// Grafana's published types spell some fields as TypeScript string enums, while a dashboard's JSON
// holds their string values. JsonOf<T> is the same type with every enum replaced by its values, so
// a dashboard file is checked field by field against Grafana's own model, excess properties
// included.
export type JsonOf<T> = T extends string ? (string extends T ? string : `${T}`)
  : T extends ReadonlyArray<infer U> ? Array<JsonOf<U>>
  : T extends object ? { [K in keyof T]: JsonOf<T[K]> }
  : T;
