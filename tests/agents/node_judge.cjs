// The Node.js SDKs from npm judge the metadata service, asking as they do on a VM:
//   node node_judge.cjs '<JSON: {"mode": "direct"|"proxy", "keys_base": URL, "expect": {...}}>'
// (NODE_PATH names the installed SDKs). In "proxy" mode nothing points an SDK anywhere:
// it runs in an unmodified container and reaches 169.254.169.254 and
// metadata.google.internal by default. In "direct" mode the test sets each SDK's own
// documented variable (AWS_EC2_METADATA_SERVICE_ENDPOINT, AZURE_POD_IDENTITY_AUTHORITY_HOST,
// GCE_METADATA_HOST) to `imds-proxy emulate` on loopback.
//
// Prints one JSON line per judge ({"judge", "ok", ...} or {..., "error"}); exits 1 if
// any failed. Tokens are checked, never printed: each key, secret and token received
// is appended, one a line, to the plan's "issued_file" (when given), so that the suite
// can check no daemon log line holds one.

"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");

const plan = JSON.parse(process.argv[2]);
const expect = plan.expect;

// Records credentials received (before they are judged: a wrong one may still be logged).
function issued(...values) {
  if (!plan.issued_file) return;
  const lines = values.filter((v) => typeof v === "string" && v.length > 0);
  if (lines.length) fs.appendFileSync(plan.issued_file, lines.map((v) => v + "\n").join(""));
}

class Failure extends Error {}
function must(cond, msg) {
  if (!cond) throw new Failure(msg);
}

function get(url, headers) {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers: headers || {}, timeout: 5000 }, (res) => {
        let body = "";
        res.on("data", (c) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode, body }));
      })
      .on("error", reject);
  });
}

function jwtParts(token) {
  const [h, c, s] = token.split(".");
  must(h && c && s, "not a JWT");
  const dec = (p) => JSON.parse(Buffer.from(p, "base64url").toString());
  return { header: dec(h), claims: dec(c), input: `${h}.${c}`, sig: Buffer.from(s, "base64url") };
}

// RS256 verified against a key given as a JWK or a PEM.
function verifies(parts, key) {
  const pub = typeof key === "string" ? crypto.createPublicKey(key) : crypto.createPublicKey({ key, format: "jwk" });
  return crypto.verify("sha256", Buffer.from(parts.input), pub, parts.sig);
}

async function aws() {
  const { fromInstanceMetadata } = require("@aws-sdk/credential-providers");
  const creds = await fromInstanceMetadata({ timeout: 3000, maxRetries: 1 })();
  issued(creds.accessKeyId, creds.secretAccessKey, creds.sessionToken);
  must(/^(ASIA|AKIA)/.test(creds.accessKeyId), "access key id shape");
  must(creds.secretAccessKey && creds.sessionToken, "secret and session token");
  must(creds.expiration instanceof Date && creds.expiration > new Date(Date.now() + 15 * 60e3), "expiration");
  return { expires_in_min: Math.round((creds.expiration - Date.now()) / 60e3) };
}

async function azure(clientId) {
  const { ManagedIdentityCredential } = require("@azure/identity");
  const cred = clientId ? new ManagedIdentityCredential({ clientId }) : new ManagedIdentityCredential();
  const t = await cred.getToken("https://management.azure.com/.default");
  must(t && t.token, "no token");
  issued(t.token);
  const parts = jwtParts(t.token);
  const c = parts.claims;
  must(c.aud === "https://management.azure.com/" || c.aud === "https://management.azure.com", `aud ${c.aud}`);
  must(c.tid === expect.azure_tenant, `tid ${c.tid}`);
  must(c.iss === `https://sts.windows.net/${expect.azure_tenant}/`, `iss ${c.iss}`);
  const want = clientId || expect.azure_system_client_id;
  must(c.appid === want, `appid ${c.appid}, not ${want}`);
  must(c.oid && c.xms_mirid && c.nbf <= c.exp, "oid, xms_mirid, nbf/exp");
  must(Math.abs(t.expiresOnTimestamp / 1000 - c.exp) < 2, "expiresOn agrees with exp");
  const keys = JSON.parse((await get(`${plan.keys_base}/imds-proxy/keys`)).body).keys;
  const jwk = keys.find((k) => k.kid === parts.header.kid);
  must(jwk, "the token's kid is not in the published key set");
  must(verifies(parts, { kty: jwk.kty, n: jwk.n, e: jwk.e }), "the token's signature does not verify");
  return { appid: c.appid };
}

async function google() {
  const { GoogleAuth, OAuth2Client } = require("google-auth-library");
  const auth = new GoogleAuth({ scopes: ["https://www.googleapis.com/auth/cloud-platform"] });
  const token = await auth.getAccessToken();
  issued(token);
  must(typeof token === "string" && token.startsWith("ya29."), "the access token does not look like Google's");
  const project = await auth.getProjectId();
  must(project === expect.gce_project, `project ${project}`);
  const client = await auth.getIdTokenClient(expect.audience);
  const idToken = await client.idTokenProvider.fetchIdToken(expect.audience);
  issued(idToken);
  const parts = jwtParts(idToken);
  must(parts.claims.aud === expect.audience, `aud ${parts.claims.aud}`);
  const certs = JSON.parse(
    (await get(`${plan.gce_base}/computeMetadata/v1/imds-proxy/identity-keys`, { "Metadata-Flavor": "Google" })).body,
  );
  const oauth = new OAuth2Client();
  const ticket = await oauth.verifySignedJwtWithCertsAsync(idToken, certs, expect.audience, [expect.gce_issuer]);
  must(ticket.getPayload().email === expect.gce_email, `email ${ticket.getPayload().email}`);
  return { project };
}

async function gcpMetadata() {
  const gcp = require("gcp-metadata");
  must(await gcp.isAvailable(), "gcp-metadata does not see GCE");
  const id = await gcp.instance("id");
  must(String(id) === expect.gce_instance_id, `instance id ${id}`);
  const project = await gcp.project("project-id");
  must(project === expect.gce_project, `project ${project}`);
  const zone = await gcp.instance("zone");
  must(zone.endsWith(`/zones/${expect.gce_zone}`), `zone ${zone}`);
  return { zone };
}

async function main() {
  const judges = [
    ["@aws-sdk/credential-providers imds", aws],
    ["@azure/identity system", () => azure(null)],
    ["@azure/identity client_id", () => azure(expect.azure_user_client_id)],
    ["google-auth-library", google],
    ["gcp-metadata", gcpMetadata],
  ];
  let bad = false;
  for (const [name, run] of judges) {
    const line = { judge: name };
    try {
      Object.assign(line, await run());
      line.ok = true;
    } catch (e) {
      line.ok = false;
      line.error = e instanceof Failure ? e.message : `${e.name}: ${e.message}`;
    }
    bad = bad || !line.ok;
    console.log(JSON.stringify(line));
  }
  process.exit(bad ? 1 : 0);
}

main();
