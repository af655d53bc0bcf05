// strongroom: check one record in the browser, with only the archive's public key (WebCrypto).
//
// 1. SHA-256(0x00 || sealed record) must be the leaf hash (RFC 6962);
// 2. the inclusion path must lead from it to the signed checkpoint's root (RFC 9162 2.1.3.2);
// 3. the checkpoint's signature (Ed25519, or ECDSA P-256 for a key in AWS KMS) must verify over its
//    RFC 8785 bytes with the archive's key, whose id the checkpoint names;
// 4. the sealed ciphertext, opened with this record's own key (AES-256-GCM, bound to its stream and
//    natural key), must hold the text the page shows.
// The key is pinned in this browser on first use: a later page with another key is flagged.
"use strict";

(function () {
  const el = document.getElementById("verification");
  if (!el) return;

  const enc = new TextEncoder();
  const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
  const unhex = (h) => new Uint8Array((h.match(/../g) || []).map((x) => parseInt(x, 16)));
  const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const concat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  };
  const sha256 = async (...parts) => new Uint8Array(await crypto.subtle.digest("SHA-256", concat(...parts)));
  const node = (l, r) => sha256(new Uint8Array([1]), l, r);

  async function rootFromInclusion(index, size, leaf, path) {
    if (index >= size) throw new Error("leaf index outside the tree");
    let fn = index, sn = size - 1, r = leaf;
    for (const p of path) {
      if (sn === 0) throw new Error("inclusion proof too long");
      if ((fn & 1) || fn === sn) {
        r = await node(p, r);
        if (!(fn & 1)) { while (fn && !(fn & 1)) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); } }
      } else {
        r = await node(r, p);
      }
      fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("inclusion proof too short");
    return r;
  }

  // RFC 8785 for what a checkpoint holds (strings, integers, null): sorted keys, ES JSON strings.
  function canonical(v) {
    if (v === null || typeof v !== "object") return JSON.stringify(v);
    if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
    return "{" + Object.keys(v).sort().map((k) => JSON.stringify(k) + ":" + canonical(v[k])).join(",") + "}";
  }

  function spkiOf(pem) {
    return b64(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""));
  }

  // DER ECDSA-Sig-Value -> r || s (32 bytes each), what WebCrypto verifies.
  function derToRaw(der) {
    let i = 2;
    if (der[1] & 0x80) i += der[1] & 0x7f;
    const part = () => {
      if (der[i] !== 0x02) throw new Error("not a DER signature");
      const len = der[i + 1];
      let v = der.slice(i + 2, i + 2 + len);
      i += 2 + len;
      while (v.length > 32 && v[0] === 0) v = v.slice(1);
      const out = new Uint8Array(32);
      out.set(v, 32 - v.length);
      return out;
    };
    return concat(part(), part());
  }

  async function checkSignature(spki, signed) {
    const cp = signed.checkpoint;
    const data = enc.encode(canonical(cp));
    const sig = b64(signed.signature);
    const ed25519 = spki.length === 44;  // the Ed25519 SPKI: a 12-byte header and the 32-byte key
    const raw = ed25519 ? spki.slice(12) : spki;
    const id = hex(await sha256(raw)).slice(0, 16);
    if (id !== cp.key_id) throw new Error("the checkpoint names key " + cp.key_id + ", not this key (" + id + ")");
    let ok;
    if (ed25519) {
      const key = await crypto.subtle.importKey("spki", spki, { name: "Ed25519" }, false, ["verify"]);
      ok = await crypto.subtle.verify({ name: "Ed25519" }, key, sig, data);
    } else {
      const key = await crypto.subtle.importKey("spki", spki, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
      ok = await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, key, derToRaw(sig), data);
    }
    if (!ok) throw new Error("the checkpoint's signature does not verify");
    return id;
  }

  // The text a reader sees for a record's content (as the exporter and the offline verifier have it).
  function messageText(doc) {
    const out = [];
    const walk = (msg) => {
      if (!msg || typeof msg !== "object") return;
      const body = typeof msg.type === "string" ? msg[msg.type] : null;
      if (body && typeof body === "object") {
        for (const k of ["body", "caption", "filename", "title", "description", "text", "name", "address", "emoji"]) {
          if (typeof body[k] === "string") out.push(body[k]);
        }
        for (const k of ["button_reply", "list_reply", "nfm_reply"]) {
          const r = body[k];
          if (r && typeof r === "object") for (const v of [r.title, r.description, r.body]) if (typeof v === "string") out.push(v);
        }
        if (body.message && typeof body.message === "object") walk(body.message);
      }
      if (Array.isArray(msg.contacts)) for (const c of msg.contacts) if (c && typeof c === "object") out.push(((c.name || {}).formatted_name) || "");
    };
    walk(doc.message);
    const request = doc.request;
    if (request && typeof request === "object") {
      walk(request);
      const t = request.template;
      if (t && typeof t === "object") {
        out.push(String(t.name || ""));
        for (const comp of t.components || []) for (const p of (comp && comp.parameters) || []) if (p && typeof p.text === "string") out.push(p.text);
      }
    }
    return out.filter((s) => s).join("\n");
  }

  async function checkContent(proof, sealed) {
    if (!proof.content_key || sealed.content == null) return "no content to compare (erased, or none kept)";
    const key = await crypto.subtle.importKey("raw", b64(proof.content_key), { name: "AES-GCM" }, false, ["decrypt"]);
    const aad = enc.encode("strongroom.content/1|" + sealed.stream + "|" + sealed.natural_key);
    let plain;
    try {
      plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: b64(sealed.nonce), additionalData: aad }, key, b64(sealed.content));
    } catch (e) {
      throw new Error("the record's key does not open the sealed ciphertext");
    }
    const content = JSON.parse(new TextDecoder().decode(plain));
    const text = messageText(content) || "[" + (sealed.type || sealed.kind) + "]";
    const shown = document.getElementById("shown-text");
    if (shown && shown.textContent !== text) throw new Error("the text shown is not the sealed content");
    return "the text shown is the sealed content";
  }

  async function run() {
    const proof = JSON.parse(el.dataset.proof);
    const sealedBytes = b64(proof.sealed_record);
    const sealed = JSON.parse(new TextDecoder().decode(sealedBytes));
    const leaf = await sha256(new Uint8Array([0]), sealedBytes);
    if (hex(leaf) !== proof.leaf_hash) throw new Error("the sealed bytes do not hash to the leaf");
    const root = await rootFromInclusion(proof.leaf_index, proof.tree_size, leaf, proof.path.map(unhex));
    const cp = proof.signed_checkpoint.checkpoint;
    if (hex(root) !== cp.root_hash || cp.tree_size !== proof.tree_size) throw new Error("the inclusion proof does not reach the signed root");
    const spki = spkiOf(el.dataset.key);
    const id = await checkSignature(spki, proof.signed_checkpoint);
    const content = await checkContent(proof, sealed);
    let pin = "";
    try {
      const pinned = localStorage.getItem("strongroom.archive-key");
      if (!pinned) { localStorage.setItem("strongroom.archive-key", id); pin = " Key " + id + " is now pinned in this browser: compare it with the key id your firm published."; }
      else if (pinned !== id) { throw new Error("this page's key " + id + " is not the key " + pinned + " this browser pinned"); }
      else { pin = " Key " + id + " is the one this browser pinned."; }
    } catch (e) { if (e instanceof Error && e.message.startsWith("this page")) throw e; }
    return "Verified on this device: leaf hash, inclusion in checkpoint of " + proof.tree_size +
      " records, signature by key " + id + "; " + content + "." + pin;
  }

  run().then((msg) => {
    el.textContent = msg;
    el.className = "verification ok";
    el.dataset.state = "verified";
  }, (err) => {
    el.textContent = "Not verified on this device: " + err.message;
    el.className = "verification bad";
    el.dataset.state = "failed";
  });
})();
