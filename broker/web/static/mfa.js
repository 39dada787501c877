// WebAuthn ceremonies for /mfa and /mfa/verify (W3C Web Authentication Level 2). The CSP forbids inline
// script, so this file is the only place they run. Options come from the broker as JSON with base64url
// binary fields; answers go back the same way (the `webauthn` library's JSON form).
"use strict";

const b64urlToBytes = (value) => {
  const base64 = value.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(value.length / 4) * 4, "=");
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
};

const bytesToB64url = (buffer) =>
  btoa(String.fromCharCode(...new Uint8Array(buffer))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

const post = async (url, csrf, body) => {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error_description || `The broker answered ${response.status}.`);
  return data;
};

const descriptors = (list) => (list || []).map((c) => ({ ...c, id: b64urlToBytes(c.id) }));

async function register(box, status) {
  const csrf = box.dataset.csrf;
  const name = document.getElementById("key-name").value;
  const options = await post("/api/mfa/webauthn/register/options", csrf, { name });
  options.challenge = b64urlToBytes(options.challenge);
  options.user.id = b64urlToBytes(options.user.id);
  options.excludeCredentials = descriptors(options.excludeCredentials);
  const credential = await navigator.credentials.create({ publicKey: options });
  const answer = {
    id: credential.id,
    rawId: bytesToB64url(credential.rawId),
    type: credential.type,
    response: {
      clientDataJSON: bytesToB64url(credential.response.clientDataJSON),
      attestationObject: bytesToB64url(credential.response.attestationObject),
      transports: credential.response.getTransports ? credential.response.getTransports() : [],
    },
    clientExtensionResults: credential.getClientExtensionResults(),
  };
  const added = await post("/api/mfa/webauthn/register", csrf, answer);
  status.textContent = `Added ${added.name}.`;
  window.location.assign("/mfa");
}

async function authenticate(box, status) {
  const csrf = box.dataset.csrf;
  const options = await post("/api/mfa/webauthn/authenticate/options", csrf, { level: box.dataset.level });
  options.challenge = b64urlToBytes(options.challenge);
  options.allowCredentials = descriptors(options.allowCredentials);
  const assertion = await navigator.credentials.get({ publicKey: options });
  const answer = {
    id: assertion.id,
    rawId: bytesToB64url(assertion.rawId),
    type: assertion.type,
    response: {
      clientDataJSON: bytesToB64url(assertion.response.clientDataJSON),
      authenticatorData: bytesToB64url(assertion.response.authenticatorData),
      signature: bytesToB64url(assertion.response.signature),
      userHandle: assertion.response.userHandle ? bytesToB64url(assertion.response.userHandle) : null,
    },
    clientExtensionResults: assertion.getClientExtensionResults(),
  };
  const result = await post("/api/mfa/webauthn/authenticate", csrf, answer);
  status.textContent = `Confirmed: your sign-in is now ${result.mfa.replace("_", "-")}.`;
  window.location.assign("/");
}

const wire = (boxId, buttonId, statusId, ceremony) => {
  const box = document.getElementById(boxId);
  const button = document.getElementById(buttonId);
  if (!box || !button) return;
  const status = document.getElementById(statusId);
  if (!window.PublicKeyCredential) {
    status.textContent = "This browser cannot use security keys.";
    button.disabled = true;
    return;
  }
  button.addEventListener("click", async () => {
    button.disabled = true;
    status.textContent = "Follow your browser's prompt…";
    try {
      await ceremony(box, status);
    } catch (error) {
      status.textContent = error.message || String(error);
      button.disabled = false;
    }
  });
};

wire("webauthn-register", "webauthn-register-button", "webauthn-register-status", register);
wire("webauthn-authenticate", "webauthn-authenticate-button", "webauthn-authenticate-status", authenticate);
