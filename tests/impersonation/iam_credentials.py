"""A stand-in for Google's IAM Credentials service, for tests/impersonation.rs.

`python iam_credentials.py HOST PORT INSTANCE_TOKEN ALLOWED` serves, on HOST:PORT:
- POST /v1/projects/-/serviceAccounts/<email>:generateAccessToken and :generateIdToken,
  as IAM Credentials does: only for a caller whose bearer token is INSTANCE_TOKEN (the
  instance's own; 401 otherwise) and an account in ALLOWED (comma-separated; 403
  PERMISSION_DENIED otherwise). Access tokens are random and remembered; ID tokens are
  RS256 JWTs signed with a key made at start.
- GET /certs: the key's certificate by key id (what google-auth verifies ID tokens with).
- GET /tokeninfo?access_token=T: the account and scopes T was issued for (400 if none).
- GET /calls: how many tokens of each kind were issued.
Every token issued is appended to $IMDS_PROXY_ISSUED_FILE (the suite looks for them in
the daemon's logs). Prints "ready" once it listens.
"""

import datetime
import hashlib
import json
import os
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

ISSUER = "https://accounts.google.com"


def make_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iam-credentials-stand-in")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem_cert = cert.public_bytes(serialization.Encoding.PEM).decode()
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    kid = hashlib.sha256(pem_cert.encode()).hexdigest()[:16]
    return kid, pem_cert, crypt.RSASigner.from_string(pem_key, key_id=kid)


class State:
    def __init__(self, instance_token, allowed):
        self.instance_token = instance_token
        self.allowed = allowed
        self.kid, self.cert, self.signer = make_key()
        self.tokens = {}
        self.calls = {"generateAccessToken": 0, "generateIdToken": 0}
        self.lock = threading.Lock()

    def record(self, token):
        path = os.environ.get("IMDS_PROXY_ISSUED_FILE")
        if path:
            with open(path, "a") as f:
                f.write(token + "\n")


def numeric_id(email):
    return str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16))


def handler(state):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            sys.stderr.write("iam-stand-in: " + (fmt % args) + "\n")

        def reply(self, status, doc):
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def error(self, status, code, message):
            self.reply(status, {"error": {"code": status, "message": message, "status": code}})

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            if url.path == "/certs":
                return self.reply(200, {state.kid: state.cert})
            if url.path == "/calls":
                with state.lock:
                    return self.reply(200, dict(state.calls))
            if url.path == "/tokeninfo":
                token = urllib.parse.parse_qs(url.query).get("access_token", [""])[0]
                with state.lock:
                    info = state.tokens.get(token)
                if info is None:
                    return self.reply(400, {"error_description": "Invalid Value"})
                return self.reply(200, info)
            self.error(404, "NOT_FOUND", "no such path")

        def do_POST(self):
            url = urllib.parse.urlparse(self.path)
            prefix = "/v1/projects/-/serviceAccounts/"
            if not url.path.startswith(prefix) or ":" not in url.path[len(prefix):]:
                return self.error(404, "NOT_FOUND", "no such method")
            email, method = url.path[len(prefix):].rsplit(":", 1)
            email = urllib.parse.unquote(email)
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return self.error(400, "INVALID_ARGUMENT", "the body is not JSON")
            if self.headers.get("Authorization") != "Bearer " + state.instance_token:
                return self.error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
            if email not in state.allowed:
                return self.error(
                    403,
                    "PERMISSION_DENIED",
                    "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
                )
            now = int(time.time())
            if method == "generateAccessToken":
                scopes = body.get("scope") or []
                if not scopes:
                    return self.error(400, "INVALID_ARGUMENT", "scope is required")
                token = "ya29.stand-in-" + secrets.token_urlsafe(48)
                expire = datetime.datetime.fromtimestamp(now + 3600, datetime.timezone.utc)
                with state.lock:
                    state.tokens[token] = {"email": email, "scope": " ".join(scopes), "expires_in": 3600}
                    state.calls[method] += 1
                state.record(token)
                return self.reply(200, {"accessToken": token, "expireTime": expire.strftime("%Y-%m-%dT%H:%M:%SZ")})
            if method == "generateIdToken":
                audience = body.get("audience")
                if not audience:
                    return self.error(400, "INVALID_ARGUMENT", "audience is required")
                claims = {"iss": ISSUER, "aud": audience, "azp": numeric_id(email), "sub": numeric_id(email), "iat": now, "exp": now + 3600}
                if body.get("includeEmail"):
                    claims.update(email=email, email_verified=True)
                token = jwt.encode(state.signer, claims).decode()
                with state.lock:
                    state.calls[method] += 1
                state.record(token[-24:])
                return self.reply(200, {"token": token})
            return self.error(404, "NOT_FOUND", "no such method")

    return Handler


def main():
    host, port, instance_token, allowed = sys.argv[1:5]
    state = State(instance_token, set(a for a in allowed.split(",") if a))
    server = ThreadingHTTPServer((host, int(port)), handler(state))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
