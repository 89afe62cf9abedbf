-- token-authority's forward auth for HAProxy 2.6 and later (core.httpclient).
--
-- An http-request action: `http-request lua.token-authority` asks token-authority about
-- the request and leaves its answer in transaction variables, which haproxy.cfg turns into
-- the response or the upstream's headers:
--
--   txn.ta_status      the status token-authority answered (200, 401, 403, 429, 503), or 503
--                      when it could not be asked
--   txn.ta_token_id, txn.ta_token_owner, txn.ta_token_name, txn.ta_token_type
--                      on 200, who the token is
--   txn.ta_challenge   the WWW-Authenticate of a 401 or 403
--   txn.ta_body        the JSON body of a refusal
--
-- The route's settings, when it has any, are in txn.ta_settings (set-var before the
-- action): the auth URL's path after /v1/forward-auth, /require/<permissions>
-- (comma-separated), /bind/<key>=<value>, /ignore-bindings; unset for the default mapping.
-- The auth URL's base is the TOKEN_AUTHORITY_URL environment variable (haproxy.cfg's
-- `setenv`).
--
-- The request it sends is built here from what HAProxy itself saw, never from the
-- client's own X-Original-* or X-Forwarded-* headers: the method, the path and query, the
-- Host, the client's address (the connection's source), and only the credential headers.

local base = os.getenv("TOKEN_AUTHORITY_URL")
    or error("token-authority.lua: set TOKEN_AUTHORITY_URL (setenv in haproxy.cfg's global section)")

local credential_headers = { "authorization", "x-api-key" }
local identity = {
    { var = "txn.ta_token_id", header = "x-token-id" },
    { var = "txn.ta_token_owner", header = "x-token-owner" },
    { var = "txn.ta_token_name", header = "x-token-name" },
    { var = "txn.ta_token_type", header = "x-token-type" },
}

-- The first value of a response header, or "".
local function first(headers, name)
    local values = headers and headers[name]
    if values == nil then
        return ""
    end
    if type(values) ~= "table" then
        return tostring(values)
    end
    return values[0] or values[1] or ""
end

local function authorize(txn)
    local settings = txn:get_var("txn.ta_settings")
    -- Fail closed: until an answer is read, the request is refused as unavailable.
    txn:set_var("txn.ta_status", 503)
    local request = txn.http:req_get_headers()
    local headers = {
        ["x-original-method"] = { txn.sf:method() },
        ["x-original-uri"] = { txn.sf:pathq() },
        ["x-forwarded-for"] = { txn.sf:src() },
    }
    local host = txn.sf:req_fhdr("host")
    if host ~= nil and host ~= "" then
        headers["x-forwarded-host"] = { host }
    end
    for _, name in ipairs(credential_headers) do
        local values = request[name]
        if values ~= nil then
            local list = {}
            for i = 0, #values do
                if values[i] ~= nil then
                    list[#list + 1] = values[i]
                end
            end
            headers[name] = list
        end
    end
    local ok, response = pcall(function()
        return core.httpclient():get({
            url = base .. (settings or ""),
            headers = headers,
            timeout = 2000,
        })
    end)
    if not ok or response == nil or response.status == nil or response.status == 0 then
        core.Warning("token-authority: no answer from " .. base)
        return
    end
    local status = tonumber(response.status) or 503
    txn:set_var("txn.ta_status", status)
    if status == 200 then
        for _, field in ipairs(identity) do
            txn:set_var(field.var, first(response.headers, field.header))
        end
    else
        txn:set_var("txn.ta_challenge", first(response.headers, "www-authenticate"))
        txn:set_var("txn.ta_body", response.body or "")
    end
end

core.register_action("token-authority", { "http-req" }, authorize, 0)
