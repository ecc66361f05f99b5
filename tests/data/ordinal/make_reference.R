# Maximum-likelihood references for ordinal outcomes with a random intercept,
# by adaptive Gauss-Hermite quadrature with 25 points:
#   two categories: lme4::glmer(bin ~ x + (1 | g), binomial(link), nAGQ = 25)
#   five categories: ordinal::clmm(factor(cat5) ~ x + (1 | g), link, nAGQ = 25)
# Run: Rscript make_reference.R > reference.csv   (R 4.2.2, Debian 12 packages
# r-cran-lme4 1.1.31 and r-cran-ordinal 2022.11-16)
suppressMessages({library(lme4); library(ordinal)})
d <- read.csv("ordinal.csv")
cat("model,quantity,value\n")
out <- function(model, q, v) cat(sprintf("%s,%s,%.10f\n", model, q, v))
for (link in c("probit", "logit")) {
  f <- glmer(as.formula(paste0("bin_", link, " ~ x + (1 | g)")), data = d,
             family = binomial(link = link), nAGQ = 25,
             control = glmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5)))
  m <- paste0("glmer_", link)
  out(m, "llf", as.numeric(logLik(f)))
  out(m, "intercept", fixef(f)[1])
  out(m, "x", fixef(f)[2])
  out(m, "var_u", as.numeric(VarCorr(f)$g))
  d$y <- factor(d[[paste0("cat5_", link)]], ordered = TRUE)
  c5 <- clmm(y ~ x + (1 | g), data = d, link = link, nAGQ = 25)
  m <- paste0("clmm_", link)
  out(m, "llf", as.numeric(logLik(c5)))
  for (j in seq_along(c5$Theta)) out(m, paste0("threshold_", j), c5$Theta[j])
  out(m, "x", c5$beta[1])
  out(m, "var_u", as.numeric(VarCorr(c5)$g))
}
