// Types of orcs-client.js, the official fastapi-orcs-ws client.
//
// The client is generic over a route's events. `python -m fastapi_orcs_ws typescript app:app`
// writes one `...Events` interface per route from the app's own Pydantic models:
//
//   import { connect } from "./orcs-client.js";
//   import type { WsChatEvents } from "./events";
//   const chat = connect<WsChatEvents>("/ws/chat");
//   await chat.request("join", { room: "blue" }); // payload and ack typed

/** What one route accepts and sends: the shape the generated `...Events` interfaces have. */
export interface RouteEvents {
  /** Client-to-server events: the payload each takes and the payload of its ack. */
  client: { [event: string]: { payload: unknown; ack: unknown } };
  /** Server-to-client events and their payloads (`error` included). */
  server: { [event: string]: unknown };
}

/** The payload of an `error` event (docs/protocol.md#error-codes). */
export interface ErrorPayload {
  message: string;
  code: string;
  event?: string | null;
  errors?: { loc: (string | number)[]; msg: string; type: string }[] | null;
  [key: string]: unknown;
}

/** Any route, untyped: what `connect()` gives without a type argument. */
export interface AnyRoute {
  client: { [event: string]: { payload: any; ack: any } };
  server: { [event: string]: any; error: ErrorPayload };
}

/** One frame as received: `{event, payload, id?}`, plus a room position when the server sends one. */
export interface Frame<P = unknown> {
  event: string;
  payload: P;
  id?: string | number;
  room?: string;
  offset?: number;
  epoch?: string;
}

/** A room's position: the last `offset` seen in history `epoch`. */
export interface Position {
  offset: number;
  epoch: string;
}

export interface OpenInfo {
  /** `false` for the first connection, `true` after a reconnect. */
  reconnected: boolean;
}

export interface CloseInfo {
  code: number;
  reason: string;
  wasClean: boolean;
  /** `false` when the client stopped for good (close(), 1000, 4401 without a new token, 4403, retries spent). */
  willReconnect: boolean;
}

export interface ReconnectInfo {
  /** 1 for the first retry after a connection was lost. */
  attempt: number;
  /** Milliseconds until the attempt. */
  delay: number;
}

/** The answer to an automatic rejoin after a reconnect (issue 13's `{room, recovered, offset, epoch}`). */
export interface RecoveryInfo {
  room: string;
  /** `false`: the server could not replay everything missed; reload the room's state. */
  recovered?: boolean;
  offset?: number;
  epoch?: string;
  [key: string]: unknown;
}

export interface ReconnectOptions {
  /** First delay bound in ms (500). */
  initialDelay?: number;
  /** Cap on the delay bound in ms (10000). */
  maxDelay?: number;
  /** Growth of the bound per failed attempt (2). */
  factor?: number;
  /** Failed attempts in a row before giving up (Infinity). */
  retries?: number;
}

/** A minimal WebSocket constructor (the browser's, Node 22's, or a compatible one). */
export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[]): {
    readonly readyState: number;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    onopen: ((event: any) => void) | null;
    onmessage: ((event: { data: any }) => void) | null;
    onclose: ((event: { code: number; reason: string; wasClean: boolean }) => void) | null;
    onerror: ((event: any) => void) | null;
  };
}

export interface ConnectOptions {
  /** A JWT, or a function asked for one before the first connection and before each reconnect. */
  token?: string | null | (() => string | null | undefined | Promise<string | null | undefined>);
  /** Where the token goes: the `["token", JWT]` subprotocol (default) or `?token=` (ends up in logs). */
  tokenIn?: "subprotocol" | "query";
  /** More subprotocols to offer (after `"token", JWT`). */
  protocols?: string[];
  /** `false` turns reconnection off; an object tunes the backoff. Default on. */
  reconnect?: boolean | ReconnectOptions;
  /** Emits and requests kept while disconnected (100); one more rejects with ClientError("buffer_full"). */
  bufferSize?: number;
  /** Default request timeout in ms (10000). */
  timeout?: number;
  /** The events that join and leave a room (`"join"`, `"leave"`), or `false` to track no rooms. */
  rooms?: false | { join?: string; leave?: string };
  /** The WebSocket implementation (default: `globalThis.WebSocket`). */
  WebSocket?: WebSocketConstructor;
}

export interface RequestOptions {
  /** Milliseconds to wait for the ack (default: the client's `timeout`). */
  timeout?: number;
}

type Lifecycle = {
  open: OpenInfo;
  close: CloseInfo;
  reconnect: ReconnectInfo;
  recovery: RecoveryInfo;
};

/** `[payload]`, optional when the payload may be null (an event that takes none). */
type PayloadArgs<P> = null extends P ? [payload?: P] : [payload: P];
type ClientEvent<R extends RouteEvents> = keyof R["client"] & string;
type ServerEvent<R extends RouteEvents> = Exclude<keyof R["server"] & string, keyof Lifecycle>;
type Handler<R extends RouteEvents, E> = E extends keyof Lifecycle
  ? (info: Lifecycle[E]) => void
  : E extends keyof R["server"]
    ? (payload: R["server"][E], frame: Frame<R["server"][E]>) => void
    : never;

export declare class Client<R extends RouteEvents = AnyRoute> {
  constructor(url: string | URL, options?: ConnectOptions);
  /** "connecting", "open", "reconnecting" or "closed". */
  readonly state: "connecting" | "open" | "reconnecting" | "closed";
  /** The last position seen per room. */
  readonly positions: { [room: string]: Position };
  /** Frames waiting for a connection. */
  readonly buffered: number;
  /** Send without an ack; resolves once written. Rejects with ClientError ("buffer_full", "closed"). */
  emit<E extends ClientEvent<R>>(event: E, ...payload: PayloadArgs<R["client"][E]["payload"]>): Promise<void>;
  /** Send with an id; resolves with the ack payload; rejects with EventError or ClientError. */
  request<E extends ClientEvent<R>>(
    event: E,
    ...args: [...PayloadArgs<R["client"][E]["payload"]>, options?: RequestOptions]
  ): Promise<R["client"][E]["ack"]>;
  /** A server event's handler gets `(payload, frame)`; a lifecycle event's gets `(info)`. Returns `off`. */
  on<E extends keyof Lifecycle | ServerEvent<R>>(event: E, handler: Handler<R, E>): () => void;
  /** Remove `handler`, or every handler of `event`. */
  off<E extends keyof Lifecycle | ServerEvent<R>>(event: E, handler?: Handler<R, E>): void;
  /** Close for good (code 1000 or 3000-4999); resolves when closed. */
  close(code?: number, reason?: string): Promise<void>;
}

/** Open a client; it connects at once and reconnects by itself until `close()`. */
export declare function connect<R extends RouteEvents = AnyRoute>(url: string | URL, options?: ConnectOptions): Client<R>;

/** The server answered a request with an `error` event. */
export declare class EventError extends Error {
  readonly name: "EventError";
  readonly code: string;
  readonly payload: ErrorPayload;
  /** The event the request sent. */
  readonly event: string;
}

/** A failure on the client's side. */
export declare class ClientError extends Error {
  readonly name: "ClientError";
  readonly code: "timeout" | "buffer_full" | "disconnected" | "closed";
}

export declare const DEFAULT_BUFFER_SIZE: number;
export declare const DEFAULT_TIMEOUT_MS: number;
export declare const DEFAULT_RECONNECT: Readonly<Required<ReconnectOptions>>;
export declare const LIFECYCLE_EVENTS: readonly ["open", "close", "reconnect", "recovery"];
