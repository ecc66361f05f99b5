# Reference for melsml.glmm: lme4::glmer, random-intercept Poisson, nAGQ = 11.
# Run from this folder: Rscript poisson_ri.R > poisson_ri_lme4.csv
suppressMessages(library(lme4))
d <- read.csv("poisson_ri.csv")
m <- glmer(y ~ x + (1 | g), data = d, family = poisson, nAGQ = 11,
           control = glmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5),
                                  tolPwrss = 1e-10))
fe <- fixef(m)
se <- sqrt(diag(as.matrix(vcov(m))))
sd_g <- attr(VarCorr(m)$g, "stddev")
out <- data.frame(
  name = c("(Intercept)", "x", "sigma", "logLik"),
  estimate = c(fe, sd_g, as.numeric(logLik(m))),
  std_error = c(se, NA, NA)
)
write.csv(out, row.names = FALSE, quote = FALSE)
