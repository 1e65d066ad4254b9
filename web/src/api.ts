// The gateway's own API (the Gateway service of protos/), over the Connect protocol from this
// page's origin. The access token lives in this module's memory only; the refresh token is an
// HttpOnly cookie the page never sees (the gateway moves it there), spent by refresh().

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { Gateway } from "./gen/parley/gateway/v1/gateway_pb.js";
import type { LoginResponse } from "./gen/parley/auth/v1/auth_pb.js";

export type GatewayClient = Client<typeof Gateway>;

export interface Session {
  userId: string;
  username: string;
  role: string;
  sessionId: string;
  expiresAt: number; // unix seconds
  mfaEnrolmentRequired: boolean;
  /** A TOTP second factor is enrolled for the account (Settings shows it on). */
  mfaEnrolled: boolean;
}

let accessToken = "";

const withToken: Interceptor = (next) => async (req) => {
  if (accessToken) req.header.set("authorization", `Bearer ${accessToken}`);
  return next(req);
};

export const gateway: GatewayClient = createClient(
  Gateway,
  createConnectTransport({
    baseUrl: window.location.origin,
    useBinaryFormat: true,
    interceptors: [withToken],
    // Same-origin fetch: the refresh cookie goes with Refresh and Logout, to this origin only.
    fetch: (input, init) => globalThis.fetch(input, { ...init, credentials: "same-origin" }),
  }),
);

function sessionOf(login: LoginResponse, username: string): Session {
  accessToken = login.accessToken;
  return {
    userId: login.userId,
    username,
    role: login.role,
    sessionId: login.sessionId,
    expiresAt: Number(login.expiresAtUnix),
    mfaEnrolmentRequired: login.mfaEnrolmentRequired,
    mfaEnrolled: login.mfaEnrolled,
  };
}

export async function login(username: string, password: string, totpCode = "", recoveryCode = ""): Promise<Session> {
  const response = await gateway.login({ username, password, totpCode, recoveryCode });
  return sessionOf(response, username);
}

// The gateway's companion to the HttpOnly refresh cookie: no secret, only that there is a session
// to refresh, so the page does not ask for one it cannot have (a 401 on every first visit).
const SESSION_HINT = "__Host-parley-session";

function mayHaveSession(): boolean {
  return document.cookie.split("; ").includes(`${SESSION_HINT}=1`);
}

function forgetSessionHint(): void {
  document.cookie = `${SESSION_HINT}=; Path=/; Max-Age=0; Secure; SameSite=Strict`;
}

let refreshing: Promise<Session | null> | null = null;

/** A new access token from the session cookie; null when this browser holds no live session
 * (without asking, when the gateway's hint says there is none: a page's first visit).
 * One refresh at a time: the refresh token is single use, and auth takes a second use of a spent
 * one for theft (it ends the session), so calls that find the token expired together share one. */
export function refresh(username = ""): Promise<Session | null> {
  if (!mayHaveSession()) return Promise.resolve(null);
  refreshing ??= (async () => {
    try {
      // Across this browser's tabs too (they share the cookie): each waits for the one before,
      // then spends the token that one left in the cookie.
      const spend = () => gateway.refresh({});
      const response = navigator.locks ? await navigator.locks.request("parley-refresh", spend) : await spend();
      return sessionOf(response, username);
    } catch (err) {
      const code = ConnectError.from(err).code;
      if (code === Code.Unauthenticated || code === Code.PermissionDenied || code === Code.NotFound) {
        forgetSessionHint(); // that session is over: the next visit shows the login at once
        return null;
      }
      throw err;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

export async function logout(): Promise<void> {
  try {
    await gateway.logout({});
  } finally {
    accessToken = "";
  }
}

export function hasToken(): boolean {
  return accessToken !== "";
}

/** Runs a call; when the access token has expired, refreshes it from the cookie once and retries. */
export async function withRefresh<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    if (ConnectError.from(err).code !== Code.Unauthenticated) throw err;
    if ((await refresh()) === null) throw err;
    return call();
  }
}

export function describe(err: unknown): string {
  const e = ConnectError.from(err);
  return e.rawMessage || e.message;
}

export function isMfaChallenge(err: unknown): boolean {
  const e = ConnectError.from(err);
  return e.code === Code.Unauthenticated && e.rawMessage.startsWith("this account uses two-factor authentication");
}
