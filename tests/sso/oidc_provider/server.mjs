// A real OpenID Connect provider (node-oidc-provider) on loopback for the single sign-on tests.
// Usage: node server.mjs PORT REDIRECT_URI
// Its development sign-in page accepts any login; the login decides the account's claims:
//   "alice@example.org"            verified email
//   "unverified:alice@example.org" email_verified false
//   "staff:bob@example.org"        verified, member of the group "gateway-admins"
// The subject (`sub`) is the whole login. A test changes an identity's groups between sign-ins by
// writing {"<login>": ["group", ...]} to the file named by OIDC_GROUPS_FILE (read at each sign-in).
import fs from "node:fs";
import net from "node:net";

import Provider from "oidc-provider";

const port = Number(process.argv[2]);
const redirectUri = process.argv[3];

function groupsFor(login, flag) {
  const file = process.env.OIDC_GROUPS_FILE;
  const table = file && fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, "utf8")) : {};
  return table[login] ?? (flag === "staff" ? ["gateway-admins"] : ["everyone"]);
}

function claimsFor(login) {
  const [flag, email] = login.includes(":") ? login.split(":", 2) : ["", login];
  return {
    sub: login,
    email,
    email_verified: flag !== "unverified",
    name: email.split("@")[0],
    groups: groupsFor(login, flag),
  };
}

// Port 0: take a free one first, since the issuer URL must name the port before the server starts.
const chosen = port || (await new Promise((resolve) => {
  const probe = net.createServer().listen(0, "127.0.0.1", () => {
    const { port: free } = probe.address();
    probe.close(() => resolve(free));
  });
}));

const provider = new Provider(`http://127.0.0.1:${chosen}`, {
  clients: [
    {
      client_id: "gateway",
      client_secret: "gateway-test-secret",
      redirect_uris: [redirectUri],
      response_types: ["code"],
      grant_types: ["authorization_code"],
      token_endpoint_auth_method: "client_secret_post",
    },
  ],
  claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"], groups: ["groups"] },
  scopes: ["openid", "email", "profile", "groups"],
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => claimsFor(id) }),
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ["gateway-test-cookie-key"] },
});
provider.proxy = false;
provider.listen(chosen, "127.0.0.1", () => console.log(`ready ${chosen}`));
