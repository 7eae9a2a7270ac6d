# podpool's image: the package as `npm install podpool` gives it, run as the `podpool` command.
#
#   docker build -t podpool:0.1.0 .            (the version in package.json)
#   docker run --rm podpool:0.1.0 --version
#   kind load docker-image podpool:0.1.0       (a kind cluster; or push it to your registry)
#
# `podpool bench <scenario> --cluster --image podpool:0.1.0` runs it twice over: the backend pods
# run `podpool pod`, the client Job `podpool bench <scenario> --in-cluster`. examples/kubernetes
# builds its client on top of it.
#
# The base image is pinned to an exact version, the same in both stages. A tag can still be moved;
# a digest can't. To pin the digest, look it up and append it to both FROM lines:
#   docker buildx imagetools inspect node:24.21.0-bookworm-slim     (the "Digest: sha256:…" line)
#   FROM node:24.21.0-bookworm-slim@sha256:<digest>

# ---- build: compile dist/ and pack the tarball npm would publish ---------------------------------
FROM node:24.21.0-bookworm-slim AS build
WORKDIR /src
# The lockfile first, so the dependency layer is rebuilt only when it changes.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json README.md LICENSE ./
COPY src ./src
COPY bench ./bench
COPY testkit ./testkit
COPY protos ./protos
# prepack runs `npm run build`; the tarball holds dist/ and protos/, as published.
RUN mkdir /pkg && npm pack --pack-destination /pkg

# ---- runtime: the tarball installed without dev dependencies, no sources -------------------------
FROM node:24.21.0-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /pkg /pkg
# Optional dependencies stay: the bench draws its charts with vega and runs its DNS with dns-packet.
RUN npm install --omit=dev --no-audit --no-fund /pkg/podpool-*.tgz \
 && rm -rf /pkg \
 && npm cache clean --force
ENV PATH=/app/node_modules/.bin:$PATH
# Numeric, so that a pod's runAsNonRoot can check it (uid 1000 is the base image's `node` user).
USER 1000:1000
# podpool pod: http, grpc, ws, udp, and its control endpoint (/ready for the readiness probe).
EXPOSE 8080 50051 8081 9090/udp 9901
ENTRYPOINT ["podpool"]
CMD ["--help"]
